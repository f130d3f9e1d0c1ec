"""Builder of real DLR test and demo models and LFV-style packages.

Every test that needs a model runs the real `libdlr.so` on files this subpackage writes: our
own C kernels (TVM packed-function ABI), a graph JSON and a `.params` file, plus an LFV
`manifest.json` around them. Nothing here imports dlr or cv2; it compiles with gcc.

    kernels.c     the C kernels (float32 NCHW, batch 1) and the TVM runtime hooks
    compile.py    compile_kernels(): gcc, cached by content hash
    graph.py      GraphBuilder (graph JSON + params) and Network (typed layers)
    reference.py  float64 numpy oracle for every op and whole networks
    networks.py   ready-made deterministic networks (reference, controllable, bench)
    package.py    PackageSpec, build_lfv_package(), zip_package()
    cli.py        `python -m lfv_edge.modelbuild`

Errors:

    LfvEdgeError
    └── BuildError    (lfv_edge.errors) gcc missing or failing, an invalid network/spec,
                      a writer self-check
"""

from __future__ import annotations

from lfv_edge.errors import BuildError

__all__ = ["BuildError"]
