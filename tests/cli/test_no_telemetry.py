"""DLR's phone-home is off: no network attempt, no banner, nothing written into site-packages.

Runs `lfv-edge infer` in a fresh interpreter whose socket layer records and refuses every
connection and name lookup.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from lfv_edge.modelbuild.package import PackageSpec
from tests.conftest import PackageFactory
from tests.imagefiles import solid_rgb, write_image

GUARD = r"""
import json, socket, sys
attempts = []
def refuse(kind):
    def blocked(*args, **kwargs):
        attempts.append(f"{kind} {args[1:] if kind.startswith('socket') else args}")
        raise OSError(f"network disabled by the test ({kind})")
    return blocked
socket.socket.connect = refuse("socket.connect")
socket.socket.connect_ex = refuse("socket.connect_ex")
socket.socket.sendto = refuse("socket.sendto")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")
from lfv_edge.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
report = {"code": code, "attempts": attempts,
          "imported": sorted(m for m in ("requests", "distro", "urllib3") if m in sys.modules)}
sys.stderr.write("GUARD " + json.dumps(report) + "\n")
"""


def _ccm_config() -> Path:
    spec = importlib.util.find_spec("dlr")
    assert spec is not None, "dlr is installed"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "counter" / "ccm_config.json"


def test_infer_makes_no_network_attempt_and_prints_no_banner(
    make_package: PackageFactory, tmp_path: Path
) -> None:
    # given a package and an image, and the state of DLR's config file in site-packages
    package = make_package(PackageSpec(image_width=64, image_height=64))
    image = write_image(tmp_path / "part.png", solid_rgb(64, 64, (200, 40, 40)))
    config = _ccm_config()
    before = config.read_bytes() if config.exists() else None
    before_mtime = config.stat().st_mtime_ns if config.exists() else None
    # when
    run = subprocess.run(
        [sys.executable, "-c", GUARD, "infer", "--model", str(package), str(image)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # then
    guard_lines = [line for line in run.stderr.splitlines() if line.startswith("GUARD ")]
    assert guard_lines, f"the guarded run finished:\n{run.stderr}"
    report = json.loads(guard_lines[-1][len("GUARD ") :])
    assert report["code"] == 0, run.stderr
    assert report["attempts"] == [], (
        f"no connection or lookup may be attempted: {report['attempts']}"
    )
    assert report["imported"] == [], (
        "DLR's phone-home dependencies (requests, distro) are never imported"
    )
    stdout = run.stdout.splitlines()
    assert len(stdout) == 1, (
        f"stdout holds only the verdict line, no CALL HOME banner:\n{run.stdout}"
    )
    assert "DetectAnomalyResult" in json.loads(stdout[0]), "and that line is the verdict"
    assert "CALL HOME" not in run.stdout + run.stderr, "no banner anywhere"
    after = config.read_bytes() if config.exists() else None
    assert after == before, "nothing written into site-packages"
    assert (config.stat().st_mtime_ns if config.exists() else None) == before_mtime, (
        "not even touched"
    )


def _after_plain_import(extra: str) -> str:
    code = (
        GUARD.split("from lfv_edge.cli")[0]  # the socket guard only
        + "import dlr  # a plain import, as another library in the process might do\n"
        + extra
        + "from lfv_edge.model.runner import import_dlr\n"
        + "from lfv_edge.errors import ModelPackageError\n"
        + "try:\n    import_dlr()\n    print('accepted')\n"
        + "except ModelPackageError as exc:\n    print('refused:', exc)\n"
        + "print('attempts:', attempts)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return run.stdout + run.stderr


def test_a_plain_dlr_import_is_quiet_thanks_to_the_set_up_opt_out() -> None:
    output = _after_plain_import("")
    assert "accepted" in output, f"phone-home is off (opt-out file written at set-up):\n{output}"
    assert "attempts: []" in output, "not even the import-time attempt"


def test_refuses_to_run_when_dlr_was_imported_with_phone_home_on() -> None:
    output = _after_plain_import(
        "import dlr.counter.phone_home as ph; ph.MGR = object()  # as with an enabled config\n"
    )
    assert "refused: dlr was imported before lfv-edge could disable its phone-home" in output, (
        output
    )
