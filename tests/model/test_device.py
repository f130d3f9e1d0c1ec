"""ELF checks and the device decision, offline, with ELF files fabricated by gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lfv_edge.errors import DeviceError
from lfv_edge.model.cpu_runtime import LIBDLR_SHA256
from lfv_edge.model.device import HostFacts, choose_device
from lfv_edge.model.elf import ElfError, read_shared_object
from lfv_edge.model.linker import LibrarySearch

DLR_API = """
int CreateDLRModel(void){return 0;} int DeleteDLRModel(void){return 0;} int RunDLRModel(void){return 0;}
int SetDLRInput(void){return 0;} int GetDLROutput(void){return 0;} int GetDLROutputShape(void){return 0;}
int GetDLROutputSizeDim(void){return 0;} int GetDLRNumInputs(void){return 0;} int GetDLRNumOutputs(void){return 0;}
int GetDLRNumWeights(void){return 0;} int GetDLRInputName(void){return 0;} int GetDLRWeightName(void){return 0;}
int GetDLRBackend(void){return 0;} int GetDLRVersion(void){return 0;} const char* DLRGetLastError(void){return "";}
"""


def _gcc(tmp: Path, name: str, source: str, *extra: str) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(source)
    out = tmp / name
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", str(out), str(src), *extra],
        check=True,
        capture_output=True,
    )
    return out


@pytest.fixture(scope="module")
def fake_gpu_libdlr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A libdlr.so exporting DLR's API and linked against libcudart.so.10.2, which is then removed."""
    tmp = tmp_path_factory.mktemp("elf")
    stub = _gcc(
        tmp, "libcudart.so.10.2", "int cudaMalloc(void){return 0;}", "-Wl,-soname,libcudart.so.10.2"
    )
    lib = _gcc(tmp, "libdlr.so", DLR_API + "int cudaMalloc(void); int use(void){return cudaMalloc();}",
               "-Wl,--no-as-needed", str(stub))  # fmt: skip
    stub.unlink()
    return lib


def _facts(gpu: bool, dirs: tuple[str, ...] = ()) -> HostFacts:
    # No ld.so.cache: only the given folders (as LD_LIBRARY_PATH) and the system folders.
    return HostFacts(gpu_present=gpu, libraries=LibrarySearch(env_dirs=dirs, cache={}))


def test_the_real_libdlr_reads_as_a_cpu_build(cpu_libdlr: Path) -> None:
    library = read_shared_object(cpu_libdlr)
    assert "CreateDLRModel" in library.defined_symbols, "exports DLR's C API"
    assert not any(n.startswith("libcudart") for n in library.needed), "no CUDA in the PyPI build"


def test_truncated_foreign_and_garbage_files_are_refused(tmp_path: Path, cpu_libdlr: Path) -> None:
    data = cpu_libdlr.read_bytes()
    (tmp_path / "short.so").write_bytes(data[:4096])
    with pytest.raises(ElfError, match="truncated or corrupt"):
        read_shared_object(tmp_path / "short.so")
    patched = bytearray(data)
    patched[18:20] = (0xB7).to_bytes(2, "little")  # e_machine = aarch64
    (tmp_path / "arm.so").write_bytes(bytes(patched))
    with pytest.raises(ElfError, match="built for aarch64"):
        read_shared_object(tmp_path / "arm.so")
    (tmp_path / "junk.so").write_bytes(b"\x13" * 200)
    with pytest.raises(ElfError, match="not an ELF"):
        read_shared_object(tmp_path / "junk.so")


def test_cpu_runtime_on_a_machine_without_gpu(cpu_libdlr: Path) -> None:
    library = read_shared_object(cpu_libdlr)
    auto = choose_device(
        "auto",
        library=library,
        library_sha256=LIBDLR_SHA256,
        meta_device="cpu",
        facts=_facts(False),
    )
    assert auto.device == "cpu", "auto falls back to the CPU"
    with pytest.raises(DeviceError) as caught:
        choose_device(
            "gpu",
            library=library,
            library_sha256=LIBDLR_SHA256,
            meta_device="cpu",
            facts=_facts(False),
        )
    text = str(caught.value)
    assert "no NVIDIA GPU" in text, "says the GPU is missing"
    assert "CPU-only build" in text, "says the runtime is CPU-only"
    assert "compiled for 'cpu'" in text, "says the model was compiled for the CPU"


def test_gpu_runtime_with_missing_cuda_libraries_is_explained(fake_gpu_libdlr: Path) -> None:
    library = read_shared_object(fake_gpu_libdlr)
    with pytest.raises(
        DeviceError, match=r"needs libraries that are not installed: libcudart\.so\.10\.2"
    ):
        choose_device(
            "gpu", library=library, library_sha256="x", meta_device=None, facts=_facts(True)
        )
    with pytest.raises(DeviceError, match=r"cannot be loaded: .*libcudart\.so\.10\.2"):
        choose_device(
            "cpu", library=library, library_sha256="x", meta_device=None, facts=_facts(True)
        )


def test_gpu_is_chosen_when_everything_is_present(fake_gpu_libdlr: Path, tmp_path: Path) -> None:
    shutil.copy(fake_gpu_libdlr, tmp_path / "libdlr.so")
    # a library the linker would accept, on the search path (an empty file it would skip)
    _gcc(tmp_path, "libcudart.so.10.2", "int cudaMalloc(void){return 0;}")
    library = read_shared_object(tmp_path / "libdlr.so")
    facts = _facts(True, (str(tmp_path),))
    assert (
        choose_device(
            "auto", library=library, library_sha256="x", meta_device="gpu", facts=facts
        ).device
        == "gpu"
    ), "auto picks the GPU"
    assert (
        choose_device(
            "gpu", library=library, library_sha256="x", meta_device=None, facts=facts
        ).device
        == "gpu"
    ), "gpu works"
    no_gpu = _facts(False, (str(tmp_path),))
    with pytest.raises(DeviceError, match=r"compiled for the GPU .* cannot run on the CPU"):
        choose_device("auto", library=library, library_sha256="x", meta_device="gpu", facts=no_gpu)
