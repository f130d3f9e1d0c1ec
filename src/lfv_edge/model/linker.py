"""How the dynamic linker finds libraries and symbols: what a kernel library can resolve.

DLR loads a model's kernel library with `dlopen(RTLD_LAZY | RTLD_LOCAL)` from inside
`libdlr.so`, which the dlr Python layer itself loads with `RTLD_LOCAL` (ctypes' default). glibc
then looks up the kernel library's undefined symbols in two scopes only (ld.so(8), dlopen(3)):

* the global scope: the program (here the Python interpreter), the libraries it links and
  the `LD_PRELOAD` / `/etc/ld.so.preload` libraries, each with what they link;
* the kernel library's own scope: itself and its `DT_NEEDED` libraries, recursively.

`libdlr.so` is in neither, so neither its exports nor the libraries it links (libstdc++, …)
can satisfy a kernel library. Measured with libdlr 1.6.0: a kernel library that takes the
address of `GetDLRVersion` (exported by libdlr) fails to load with "undefined symbol:
GetDLRVersion"; one that calls `operator new` without linking libstdc++ kills the process with
"symbol lookup error" (exit 127), because a function is bound lazily, at its first call, where
no error can be returned. So pre-flight refuses every strong undefined symbol that these two
scopes do not define.

Library search, for a `DT_NEEDED` name without a `/` (ld.so(8)): the requester's `DT_RPATH`
and those of the objects that loaded it (each only when that object has no `DT_RUNPATH`), the
program's `DT_RPATH`, `LD_LIBRARY_PATH`, the requester's `DT_RUNPATH`, `/etc/ld.so.cache`
(`ldconfig -p`), then the system folders. A candidate that is not an ELF shared object for
this machine is skipped, as the linker does. Not modelled: `$LIB`/`$PLATFORM` in paths,
hardware-capability sub-folders, libraries another module loads with `RTLD_GLOBAL` (lfv-edge
loads none), and symbol versions (a missing version fails `dlopen` cleanly, with a message).

Pure: reads files, runs `ldconfig -p` once; no dlr, no cv2.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from lfv_edge.model.elf import ElfError, SharedObject, read_shared_object

# The folders ld.so searches last (glibc's system directories, both multiarch layouts).
DEFAULT_LIBRARY_DIRS = (
    "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
    "/lib64", "/usr/lib64", "/lib", "/usr/lib", "/usr/local/lib",
)  # fmt: skip
PRELOAD_FILE = Path("/etc/ld.so.preload")


@dataclass(frozen=True, slots=True)
class Linked:
    """A set of objects as the dynamic linker would load them, and what it could not find."""

    libraries: tuple[SharedObject, ...]  # roots first, then dependencies breadth-first
    missing: tuple[tuple[str, str], ...] = ()  # (library name, file of the object needing it)

    @property
    def defined_symbols(self) -> frozenset[str]:
        """Every symbol some object in the set exports."""
        return frozenset().union(*(lib.defined_symbols for lib in self.libraries))

    @property
    def missing_names(self) -> list[str]:
        """The library names that were found nowhere, once each."""
        return list(dict.fromkeys(name for name, _ in self.missing))


@dataclass(frozen=True, slots=True)
class LibrarySearch:
    """Where the dynamic linker of this machine looks for a library (injectable for tests)."""

    env_dirs: tuple[str, ...] = ()  # LD_LIBRARY_PATH
    cache: Mapping[str, tuple[str, ...]] | None = None  # ld.so.cache: name → paths
    default_dirs: tuple[str, ...] = DEFAULT_LIBRARY_DIRS
    preload: tuple[str, ...] = ()  # LD_PRELOAD, then /etc/ld.so.preload

    @classmethod
    def of_this_machine(cls, environ: Mapping[str, str] = os.environ) -> LibrarySearch:
        """The search this process's dynamic linker uses."""
        preload = environ.get("LD_PRELOAD", "").replace(":", " ").split()
        with contextlib.suppress(OSError):  # no preload file: the usual case
            preload += PRELOAD_FILE.read_text().split()
        return cls(
            env_dirs=tuple(d for d in environ.get("LD_LIBRARY_PATH", "").split(":") if d),
            cache=ld_cache(),
            preload=tuple(preload),
        )

    def candidates(
        self, name: str, requester: SharedObject, loader_rpaths: tuple[str, ...] = ()
    ) -> Iterator[Path]:
        """The files the linker tries, in order, for `name` needed by `requester`."""
        if "/" in name:
            yield Path(name)
            return
        dirs: list[str] = []
        if not requester.runpath:
            dirs += [*requester.rpath, *loader_rpaths]
        dirs += self.env_dirs
        dirs += requester.runpath
        yield from (Path(d) / name for d in dirs)
        yield from (Path(p) for p in (self.cache or {}).get(name, ()))
        yield from (Path(d) / name for d in self.default_dirs)

    def find(
        self, name: str, requester: SharedObject, loader_rpaths: tuple[str, ...] = ()
    ) -> SharedObject | None:
        """The library the linker would load for `name`, or None when it finds none."""
        for path in self.candidates(name, requester, loader_rpaths):
            library = _read_library(path, requester.machine)
            if library is not None:
                return library
        return None

    def link(self, *roots: SharedObject, extra_rpaths: tuple[str, ...] = ()) -> Linked:
        """`roots` and every library they need, recursively, as the linker resolves them.

        `extra_rpaths`: `DT_RPATH` folders of the objects that load the roots (the program's).
        """
        loaded: dict[str, SharedObject] = {}
        order: list[SharedObject] = list(roots)
        missing: list[tuple[str, str]] = []
        queue: list[tuple[SharedObject, tuple[str, ...]]] = [(r, extra_rpaths) for r in roots]
        seen_files = {_key(r.path) for r in roots}
        while queue:
            requester, inherited = queue.pop(0)
            # A library found through RPATH passes that RPATH on to what it loads.
            chain = (() if requester.runpath else requester.rpath) + inherited
            for name in requester.needed:
                if name in loaded:
                    continue
                library = self.find(name, requester, inherited)
                if library is None:
                    missing.append((name, requester.path.name))
                    continue
                loaded[name] = library
                if _key(library.path) in seen_files:
                    continue
                seen_files.add(_key(library.path))
                order.append(library)
                queue.append((library, chain))
        return Linked(libraries=tuple(order), missing=tuple(missing))


def _key(path: Path) -> str:
    return str(path.resolve())


@functools.cache
def _read_cached(path: str, machine: int, _stamp: tuple[int, int]) -> SharedObject | None:
    try:
        return read_shared_object(Path(path), expected_machine=machine)
    except (ElfError, OSError):
        return None


def _read_library(path: Path, machine: int) -> SharedObject | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    if not path.is_file():
        return None
    return _read_cached(str(path), machine, (stat.st_mtime_ns, stat.st_size))


@functools.cache
def ld_cache() -> Mapping[str, tuple[str, ...]]:
    """The dynamic linker's cache (`ldconfig -p`): library name → paths; empty if unreadable."""
    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            completed = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if completed.returncode != 0:
            continue
        entries: dict[str, list[str]] = {}
        for line in completed.stdout.splitlines()[1:]:
            name, arrow, path = line.strip().partition(" => ")
            if arrow and name:
                entries.setdefault(name.split()[0], []).append(path.strip())
        return {name: tuple(paths) for name, paths in entries.items()}
    return {}


@dataclass(frozen=True, slots=True)
class SymbolCheck:
    """Which of a library's undefined symbols nothing would provide."""

    linked: Linked  # the library and what it links
    unresolved: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProcessLinking:
    """What a library `dlopen`ed with `RTLD_LOCAL` into a process can link against."""

    search: LibrarySearch
    scope: Linked  # the global scope: the program first, then preloads and what they link

    @classmethod
    def of_program(cls, search: LibrarySearch, executable: Path) -> ProcessLinking:
        """The linking of a process running `executable` with this library search.

        Raises:
            ElfError: the program is not a readable ELF file for this machine.
        """
        program = read_shared_object(executable.resolve(), executable=True)
        preloaded = [
            library
            for library in (search.find(name, program) for name in search.preload)
            if library is not None  # ld.so ignores, with a warning, a preload it cannot find
        ]
        return cls(search, search.link(program, *preloaded, extra_rpaths=_own_rpath(program)))

    @classmethod
    def of_this_process(cls) -> ProcessLinking:
        """This Python process's linking (cached per program and linker environment)."""
        environ = os.environ
        return _this_process(
            sys.executable, environ.get("LD_LIBRARY_PATH", ""), environ.get("LD_PRELOAD", "")
        )

    def check(self, library: SharedObject) -> SymbolCheck:
        """Resolve `library`'s strong undefined symbols as `dlopen(RTLD_LOCAL)` would."""
        linked = self.search.link(library, extra_rpaths=_own_rpath(self.scope.libraries[0]))
        available = linked.defined_symbols | self.scope.defined_symbols
        return SymbolCheck(linked=linked, unresolved=library.undefined_symbols - available)


def _own_rpath(program: SharedObject) -> tuple[str, ...]:
    return () if program.runpath else program.rpath


@functools.cache
def _this_process(executable: str, _library_path: str, _preload: str) -> ProcessLinking:
    return ProcessLinking.of_program(LibrarySearch.of_this_machine(), Path(executable))
