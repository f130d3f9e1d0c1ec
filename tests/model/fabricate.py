"""Model folders with fabricated kernel libraries: our builder's model, kernels rebuilt with extras.

The stage folder (`mochi/`) of a package our builder made is itself a bare DLR model folder.
`kernel_folder` copies it and rebuilds `compiled.so` from our kernels plus a C snippet, linked
without `--no-undefined`, so the library can carry undefined symbols, constructors, extra
`DT_NEEDED` entries or a `__tvm_dev_mblob` exactly as a test needs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from lfv_edge.modelbuild import compile as kernel_compile
from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory

KERNELS_C = Path(kernel_compile.__file__).with_name("kernels.c")


def gcc_shared(out: Path, sources: list[Path], *extra: str) -> Path:
    """`gcc -shared -fPIC` with our usual visibility, undefined symbols allowed."""
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O1", "-fvisibility=hidden", "-o", str(out),
         *map(str, sources), *extra],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def kernel_folder(
    make_package: PackageFactory,
    dest: Path,
    snippet: str = "",
    *link: str,
    edit_graph: Callable[[dict[str, object]], None] | None = None,
) -> Path:
    """A bare model folder at `dest`: our 64×64 model, kernels rebuilt with `snippet` and `link`."""
    stage = make_package(PackageSpec(image_width=64, image_height=64), with_libdlr=False) / "mochi"
    shutil.copytree(stage, dest)
    extra = dest.parent / f"{dest.name}-extra.c"
    extra.write_text(snippet or "/* nothing extra */\n")
    gcc_shared(dest / "compiled.so", [KERNELS_C, extra], *link, "-lm")
    if edit_graph is not None:
        graph_path = dest / "compiled_model.json"
        graph = json.loads(graph_path.read_text())
        edit_graph(graph)
        graph_path.write_text(json.dumps(graph))
    return dest


def rename_function(old: str, new: str) -> Callable[[dict[str, object]], None]:
    """A graph edit: the node calling `old` calls `new` instead."""

    def edit(graph: dict[str, object]) -> None:
        nodes = graph["nodes"]
        assert isinstance(nodes, list)
        hits = [n for n in nodes if n.get("attrs", {}).get("func_name") == old]
        assert hits, f"no node calls {old}"
        for node in hits:
            node["attrs"]["func_name"] = new

    return edit
