"""Regenerates the committed gRPC code from `edge-agent.proto` (a developer tool, not run on devices).

    .venv/bin/python -m lfv_edge.agent.protogen        # rewrites edge_agent_pb2{.py,.pyi,_grpc.py}

The generated modules are committed so that devices need neither protoc nor grpcio-tools;
tests/agent/test_proto.py regenerates them and fails when they differ from the proto. The
generator is pinned in pyproject.toml (grpcio-tools==…) because its output embeds its own
version and sets the floors of the grpcio and protobuf runtime dependencies.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("edge-agent.proto")
SOURCE_ROOT = Path(__file__).resolve().parents[2]  # src/, so imports read `lfv_edge.agent.…`
GENERATED = ("edge_agent_pb2.py", "edge_agent_pb2.pyi", "edge_agent_pb2_grpc.py")


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run protoc on the proto into `out_dir`; returns each generated file's bytes by name.

    Raises:
        RuntimeError: grpcio-tools is missing or protoc failed.
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        msg = "grpcio-tools is not installed (it is a dev dependency: pip install -e '.[dev]')"
        raise RuntimeError(msg) from exc
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{SOURCE_ROOT}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(PROTO.resolve().relative_to(SOURCE_ROOT)),
        ]
    )
    if code != 0:
        msg = f"protoc failed with exit code {code} on {PROTO}"
        raise RuntimeError(msg)
    package_dir = out_dir / "lfv_edge" / "agent"
    return {name: (package_dir / name).read_bytes() for name in GENERATED}


def main() -> int:
    """Regenerate the committed modules next to the proto."""
    with tempfile.TemporaryDirectory() as scratch:
        for name, data in generate(Path(scratch)).items():
            PROTO.with_name(name).write_bytes(data)
            print(f"wrote {PROTO.with_name(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
