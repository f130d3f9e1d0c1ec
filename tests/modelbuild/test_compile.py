"""compile_kernels: exported symbols, dependencies, the content-hash cache, clear errors."""

from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from lfv_edge.model.elf import read_shared_object
from lfv_edge.modelbuild import BuildError
from lfv_edge.modelbuild.compile import KERNELS_SOURCE, compile_kernels, default_cache_dir
from lfv_edge.modelbuild.graph import KERNEL_SYMBOLS

HOOKS = {"__tvm_module_ctx", "__TVMAPISetLastError", "__TVMBackendParallelLaunch"}


def test_library_exports_every_kernel_and_the_runtime_hooks(kernels: Path) -> None:
    # when
    library = read_shared_object(kernels)
    # then
    missing = sorted((KERNEL_SYMBOLS | HOOKS) - library.defined_symbols)
    assert not missing, f"not exported: {missing}"
    extra = sorted(
        s for s in library.defined_symbols - KERNEL_SYMBOLS - HOOKS if not s.startswith("_")
    )
    assert not extra, f"-fvisibility=hidden keeps helpers private, but exported: {extra}"


@pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the symbol-version pins in kernels.c are x86-64's"
)
def test_library_needs_only_libc_and_libm_of_an_old_glibc(kernels: Path) -> None:
    # when
    library = read_shared_object(kernels)
    versions = {
        (int(major), int(minor))
        for major, minor in re.findall(rb"GLIBC_(\d+)\.(\d+)", kernels.read_bytes())
    }
    # then
    assert set(library.needed) <= {"libc.so.6", "libm.so.6"}, f"NEEDED {library.needed}"
    assert versions, "the library references versioned glibc symbols"
    assert max(versions) <= (2, 14), f"needs GLIBC {max(versions)}; libdlr.so 1.6.0 needs 2.14"


def test_second_compile_reuses_the_cached_library(tmp_path: Path) -> None:
    # given
    first = compile_kernels(cache_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    # when
    second = compile_kernels(cache_dir=tmp_path)
    # then
    assert second == first, "same source, flags and compiler → same cache entry"
    assert second.stat().st_mtime_ns == stamp, "the cached file is not rebuilt"
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no leftovers in the cache"


def test_changed_source_gets_its_own_cache_entry(tmp_path: Path) -> None:
    # given
    edited = tmp_path / "kernels.c"
    edited.write_text(KERNELS_SOURCE.read_text() + "\n/* edited */\n")
    cache = tmp_path / "cache"
    # when
    original = compile_kernels(cache_dir=cache)
    changed = compile_kernels(source=edited, cache_dir=cache)
    # then
    assert original != changed, "the cache key covers the source text"


def test_dest_receives_a_copy(tmp_path: Path, kernels: Path) -> None:
    # when
    copied = compile_kernels(tmp_path / "stage" / "compiled.so", cache_dir=kernels.parent)
    # then
    assert copied == tmp_path / "stage" / "compiled.so", "returns the destination"
    assert copied.read_bytes() == kernels.read_bytes(), "byte-identical to the cached build"


def test_cache_dir_follows_the_environment(tmp_path: Path) -> None:
    # then
    override = {"LFV_EDGE_KERNEL_CACHE": str(tmp_path / "k"), "XDG_CACHE_HOME": "/x"}
    assert default_cache_dir(override) == tmp_path / "k", "explicit override wins"
    assert default_cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/lfv-edge/kernels"), "XDG"
    assert default_cache_dir({}) == Path.home() / ".cache/lfv-edge/kernels", "home fallback"


def test_missing_compiler_is_a_build_error(tmp_path: Path) -> None:
    # then
    with pytest.raises(BuildError, match="'no-such-gcc' was not found on PATH"):
        compile_kernels(cache_dir=tmp_path, compiler="no-such-gcc")


def test_compiler_failure_carries_gcc_stderr(tmp_path: Path) -> None:
    # given
    broken = tmp_path / "broken.c"
    broken.write_text("int f(void) { return undefined_name; }\n")
    # when
    with pytest.raises(BuildError) as caught:
        compile_kernels(source=broken, cache_dir=tmp_path / "cache")
    # then
    text = str(caught.value)
    assert "failed to compile" in text, "says what failed"
    assert "undefined_name" in text, "includes gcc's own diagnostic"
    assert not list((tmp_path / "cache").glob("*.so")), "no half-built library is cached"
