"""Helpers for the model-folder tests: the real third-party folders and a plain C-API run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[2]
# Real compiled model folders from public repositories, kept beside the checkout (never in it).
REAL_MODELS = REPO.parent / "shared" / "realmodels"


def real_folder(name: str) -> Path:
    """A real model folder, or skip the test with a message when the collection is absent."""
    folder = REAL_MODELS / name
    if not folder.is_dir():
        pytest.skip(f"the real model folder {name} is not available ({REAL_MODELS} is absent)")
    return folder


def capi_run(
    libdlr: Path, folder: Path, inputs: Mapping[str, NDArray[np.generic]], tmp_path: Path
) -> subprocess.CompletedProcess[str] | list[NDArray[np.generic]]:
    """Run `folder` through libdlr's C API in a child (tests/model/capi_child.py).

    Returns the outputs, or the completed child process when it did not exit 0 (it may have
    been killed: some folders take the whole process down).
    """
    given, taken = tmp_path / "capi-in.npz", tmp_path / "capi-out.npz"
    np.savez(given, **dict(inputs))  # type: ignore[arg-type]
    env = dict(os.environ)  # the same TVM_NUM_THREADS / TVM_BIND_THREADS as our runner
    run = subprocess.run(
        [sys.executable, "-m", "tests.model.capi_child", str(libdlr), str(folder), str(given), str(taken)],
        capture_output=True, text=True, timeout=300, check=False, cwd=REPO, env=env,
    )  # fmt: skip
    if run.returncode != 0:
        return run
    with np.load(taken) as outputs:
        return [outputs[f"out{i}"] for i in range(len(outputs.files))]
