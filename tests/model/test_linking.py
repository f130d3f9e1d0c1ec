"""Pre-flight resolves a kernel library's undefined symbols as `dlopen(RTLD_LOCAL)` does.

Each refusal is checked against the real thing: the same folder loaded by libdlr's C API in a
child process fails (or dies) for exactly the reason pre-flight gives, and each accepted case
really loads and runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfv_edge.errors import ModelPackageError
from lfv_edge.model.elf import SharedObject, read_shared_object
from lfv_edge.model.linker import LibrarySearch, ProcessLinking
from lfv_edge.model.package import read_model_folder
from lfv_edge.model.preflight import check_model_folder
from lfv_edge.model.probe import probe_package
from tests.conftest import PackageFactory
from tests.model.fabricate import gcc_shared, kernel_folder
from tests.model.realmodels import capi_run

pytestmark = pytest.mark.dlr

ZEROS = {"data": np.zeros((1, 3, 64, 64), np.float32)}


def test_a_symbol_only_libdlr_exports_is_refused_because_the_kernel_cannot_see_it(
    make_package: PackageFactory, cpu_libdlr: Path, tmp_path: Path
) -> None:
    # given a kernel library that uses GetDLRVersion, which libdlr.so itself exports
    assert "GetDLRVersion" in read_shared_object(cpu_libdlr).defined_symbols
    folder = kernel_folder(
        make_package,
        tmp_path / "dlrsym",
        "extern const char* GetDLRVersion(void);\n"
        '__attribute__((visibility("default"))) const char* (*lfv_test_ref)(void) = GetDLRVersion;\n',
    )
    # then pre-flight refuses it, naming the symbol
    with pytest.raises(ModelPackageError, match=r"needs symbols .*: GetDLRVersion"):
        check_model_folder(folder)
    # and rightly so: libdlr loads kernel libraries RTLD_LOCAL, its exports are out of reach
    plain = capi_run(cpu_libdlr, folder, ZEROS, tmp_path)
    assert isinstance(plain, subprocess.CompletedProcess), "DLR cannot load it"
    assert "undefined symbol: GetDLRVersion" in plain.stderr, plain.stderr


def test_a_cxx_symbol_without_linking_libstdcxx_is_refused_and_would_kill_the_process(
    make_package: PackageFactory, cpu_libdlr: Path, tmp_path: Path
) -> None:
    # given a kernel library calling operator new at load time without linking libstdc++
    # (libdlr.so links libstdc++, but privately: the kernel library cannot use it)
    assert "libstdc++.so.6" in read_shared_object(cpu_libdlr).needed
    folder = kernel_folder(
        make_package,
        tmp_path / "cxxsym",
        "extern void* _Znwm(unsigned long);\n"
        "__attribute__((constructor)) static void grab(void) { (void)_Znwm(8); }\n",
    )
    with pytest.raises(ModelPackageError, match=r"needs symbols .*: _Znwm; .*symbol lookup error"):
        check_model_folder(folder)
    plain = capi_run(cpu_libdlr, folder, ZEROS, tmp_path)
    assert isinstance(plain, subprocess.CompletedProcess)
    assert plain.returncode == 127, "the lazy binding fails inside the constructor: process gone"
    assert "symbol lookup error" in plain.stderr
    assert "undefined symbol: _Znwm" in plain.stderr


def test_a_symbol_from_a_library_found_through_runpath_passes_and_runs_exactly(
    make_package: PackageFactory, cpu_libdlr: Path, tmp_path: Path
) -> None:
    # given a helper library in a sub-folder, found through the kernel's RUNPATH ($ORIGIN/lib)
    helper_dir = tmp_path / "runpath" / "lib"
    helper_dir.mkdir(parents=True)
    helper_c = tmp_path / "helper.c"
    helper_c.write_text(
        '__attribute__((visibility("default"))) int lfv_helper(void) { return 7; }\n'
    )
    gcc_shared(helper_dir / "libhelper.so", [helper_c], "-Wl,-soname,libhelper.so")
    folder = kernel_folder(
        make_package,
        tmp_path / "runpath" / "model",
        "extern int lfv_helper(void);\n"
        "__attribute__((constructor)) static void use(void) { (void)lfv_helper(); }\n",
        f"-L{helper_dir}",
        "-lhelper",
        "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib",
    )
    # when pre-flight reads it
    model = read_model_folder(folder)
    # then the helper is found where the dynamic linker finds it, and the model runs
    assert [lib.path.name for lib in model.stage.kernel_linked.libraries][:2] == [
        "compiled.so",
        "libhelper.so",
    ]
    assert [Path(d).resolve() for d in model.stage.kernel.runpath] == [helper_dir.resolve()]
    plain = capi_run(cpu_libdlr, folder, ZEROS, tmp_path)
    assert isinstance(plain, list), plain
    (summary,) = probe_package(folder, "cpu")
    assert summary.shape == (1, 2)
    # and without the helper, pre-flight names the missing library
    (helper_dir / "libhelper.so").unlink()
    with pytest.raises(
        ModelPackageError, match=r"needs libraries that are not installed: libhelper\.so"
    ):
        check_model_folder(folder)


def test_symbols_of_the_running_python_are_in_scope(
    make_package: PackageFactory, cpu_libdlr: Path, tmp_path: Path
) -> None:
    # The interpreter (and the libraries it links) is the global scope: a kernel library may
    # use its symbols without linking them.
    folder = kernel_folder(
        make_package,
        tmp_path / "pysym",
        "extern int Py_IsInitialized(void);\n"
        "__attribute__((constructor)) static void ask(void) { (void)Py_IsInitialized(); }\n",
    )
    assert "Py_IsInitialized" in read_shared_object(folder / "compiled.so").undefined_symbols
    check_model_folder(folder)  # accepted
    assert isinstance(capi_run(cpu_libdlr, folder, ZEROS, tmp_path), list), "and it loads"


def test_preloaded_libraries_are_in_the_global_scope(tmp_path: Path) -> None:
    provider_c = tmp_path / "provider.c"
    provider_c.write_text(
        '__attribute__((visibility("default"))) int lfv_preloaded(void) { return 1; }\n'
    )
    provider = gcc_shared(tmp_path / "libprovider.so", [provider_c])
    user_c = tmp_path / "user.c"
    user_c.write_text(
        "extern int lfv_preloaded(void);\n"
        '__attribute__((visibility("default"))) int lfv_use(void) { return lfv_preloaded(); }\n'
    )
    user = read_shared_object(gcc_shared(tmp_path / "libuser.so", [user_c]))
    plain = ProcessLinking.of_program(LibrarySearch.of_this_machine({}), Path(sys.executable))
    assert plain.check(user).unresolved == {"lfv_preloaded"}
    preloaded = ProcessLinking.of_program(
        LibrarySearch.of_this_machine({"LD_PRELOAD": str(provider)}), Path(sys.executable)
    )
    assert preloaded.check(user).unresolved == frozenset()


def _object(
    path: str, *, rpath: tuple[str, ...] = (), runpath: tuple[str, ...] = ()
) -> SharedObject:
    return SharedObject(Path(path), 0x3E, frozenset(), (), rpath=rpath, runpath=runpath)


def test_the_library_search_follows_ld_so_order() -> None:
    search = LibrarySearch(
        env_dirs=("/env",), cache={"libx.so.1": ("/cached/libx.so.1",)}, default_dirs=("/sys",)
    )

    def order(requester: SharedObject, loaders: tuple[str, ...] = ()) -> list[str]:
        return [str(p) for p in search.candidates("libx.so.1", requester, loaders)]

    # DT_RPATH (own, then the loaders'), LD_LIBRARY_PATH, DT_RUNPATH, cache, system folders
    assert order(_object("/a/k.so", rpath=("/rp",)), ("/loader-rp",)) == [
        "/rp/libx.so.1", "/loader-rp/libx.so.1", "/env/libx.so.1",
        "/cached/libx.so.1", "/sys/libx.so.1",
    ]  # fmt: skip
    # with DT_RUNPATH present, no DT_RPATH is searched at all, and RUNPATH comes after the env
    assert order(_object("/a/k.so", rpath=("/rp",), runpath=("/run",)), ("/loader-rp",)) == [
        "/env/libx.so.1", "/run/libx.so.1", "/cached/libx.so.1", "/sys/libx.so.1",
    ]  # fmt: skip
    assert order(_object("/a/k.so")) == ["/env/libx.so.1", "/cached/libx.so.1", "/sys/libx.so.1"]
    assert [str(p) for p in search.candidates("/abs/libx.so.1", _object("/a/k.so"))] == [
        "/abs/libx.so.1"
    ], "a name with a slash is a path"


def test_a_candidate_for_another_machine_is_skipped_like_ld_so_does(
    tmp_path: Path, cpu_libdlr: Path
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    data = bytearray(cpu_libdlr.read_bytes())
    data[18:20] = (0xB7).to_bytes(2, "little")  # an aarch64 header
    (first / "libdlr.so").write_bytes(bytes(data))
    (second / "libdlr.so").write_bytes(cpu_libdlr.read_bytes())
    search = LibrarySearch(env_dirs=(str(first), str(second)), cache={}, default_dirs=())
    found = search.find("libdlr.so", read_shared_object(cpu_libdlr))
    assert found is not None
    assert found.path == second / "libdlr.so"
