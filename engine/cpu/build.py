"""Compiling the engine's C sources (the .c files beside this one) for this machine, and loading them.

A source is compiled once with the system's C compiler (`$CC`, else cc, gcc or clang), tuned for
this CPU (`-march=native` on x86-64, `-mcpu=native` on ARM64, as MLX's own CPU `mx.compile` compiles
C++ at run time), with OpenMP where the compiler has it (Apple clang has not: the loops then run on
one thread). The library lands in $CSM_HOME/lib under a name made from the source's hash, the flags
and the compiler, so an edited source or another machine's flags build anew, and a finished build
is reused by every later process. Several processes may build at once: each writes its own
temporary file and renames it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from engine.constants import csm_home

SOURCES = Path(__file__).parent
_MACHINE_FLAGS = {"x86_64": "-march=native", "AMD64": "-march=native",
                  "aarch64": "-mcpu=native", "arm64": "-mcpu=native"}


class BuildError(RuntimeError):
    """A C source could not be compiled here (no compiler, an unsupported CPU, a compiler error)."""


def machine_supported() -> bool:
    """Whether this CPU architecture is one the C sources are written for (x86-64, ARM64)."""
    return platform.machine() in _MACHINE_FLAGS


def library_dir() -> Path:
    return csm_home() / "lib"


def compiler() -> str:
    found = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not found:
        raise BuildError("no C compiler (cc, gcc or clang) on PATH")
    return found


def build_library(source: str, extra_flags: list[str] | tuple[str, ...] = (), *,
                  sources: tuple[str, ...] = ()) -> Path:
    """Compile `source` (a file name in engine/cpu/, plus any `sources` compiled with it) into a
    shared library for this machine, once; return its path. Raises BuildError with the reason."""
    if not machine_supported():
        raise BuildError(f"no C kernels for {platform.machine()} CPUs")
    cc = compiler()
    files = [SOURCES / source, *(SOURCES / s for s in sources)]
    text = "".join(f.read_text() for f in files)
    headers = "".join(h.read_text() for h in sorted(SOURCES.glob("*.h")))
    flags = ["-O3", _MACHINE_FLAGS[platform.machine()], "-fPIC", "-shared", *extra_flags]
    digest = hashlib.sha256((text + headers + " ".join(flags) + cc).encode()).hexdigest()[:16]
    target = library_dir() / f"csm_{Path(source).stem}_{digest}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        errors = []
        for openmp in (["-fopenmp"], []):
            cmd = [cc, *flags, *openmp, f"-I{SOURCES}", *map(str, files), "-o", str(out), "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                break
            errors.append(f"{' '.join(cmd)}: {done.stderr.strip()[-300:]}")
        else:
            raise BuildError("; ".join(errors))
        os.replace(out, target)  # atomic: a concurrent build leaves one good file
    return target


def load_library(source: str, extra_flags: list[str] | tuple[str, ...] = (), *,
                 sources: tuple[str, ...] = ()) -> ctypes.CDLL:
    """build_library, then load it with ctypes (argument types are the caller's to declare)."""
    return ctypes.CDLL(str(build_library(source, extra_flags, sources=sources)))
