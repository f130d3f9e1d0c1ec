"""Where the embedded demo package is: the default model of `infer`, `inspect` and `demo`.

The demo package is committed as a Greengrass model-component artifact,
`artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip`, in the source
tree (tools/demo_model/ rebuilds it). `$LFV_EDGE_DEFAULT_MODEL` points elsewhere, e.g. when
lfv-edge is installed without the source tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lfv_edge.errors import ConfigError

DEFAULT_MODEL_ENV = "LFV_EDGE_DEFAULT_MODEL"
EMBEDDED_PACKAGE = Path(
    "artifacts/com.lfvedge.DemoModel/1.0.0/lfv_demo_greengrass_model_component.zip"
)


def embedded_package(environ: Mapping[str, str] = os.environ) -> Path:
    """`$LFV_EDGE_DEFAULT_MODEL`, else the demo package of the source tree.

    Raises:
        ConfigError: neither exists.
    """
    configured = environ.get(DEFAULT_MODEL_ENV)
    if configured:
        return Path(configured)
    tree = (
        Path(__file__).resolve().parents[3]
    )  # src/lfv_edge/demo/embedded.py → the repository root
    candidate = tree / EMBEDDED_PACKAGE
    if candidate.is_file():
        return candidate
    msg = f"no --model given and no embedded demo package at {candidate} (set {DEFAULT_MODEL_ENV})"
    raise ConfigError(msg)
