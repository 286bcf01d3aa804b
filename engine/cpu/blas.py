"""An optimised BLAS for MLX's CPU backend on Linux.

MLX's Linux CPU wheel links a reference BLAS/LAPACK (fp32 GEMM about 5 GFLOP/s on a 2-core Xeon).
If an OpenBLAS is loaded with RTLD_GLOBAL *before* `mlx.core` is first imported, the dynamic linker
resolves libmlx's `cblas_*` / LAPACK symbols to it (the global scope is searched before a library's
own dependencies), so MLX runs its matrix products there: ~300 GFLOP/s GEMM and a memory-bound
matvec, with no LD_PRELOAD. `engine/__init__.py` calls `load_openblas()` as its first statement.

Where the library comes from, in order:
  1. `CSM_OPENBLAS=/path/to/libopenblas.so` (an explicit choice);
  2. the PyPI wheel `cmeel-openblas` (a Linux dependency of this package). It is built for one CPU
     target (DYNAMIC_ARCH=OFF, e.g. SKYLAKEX), so we check the CPU can run it, and it needs
     `libgfortran.so.5`; when the system has none we reuse the libgfortran that MLX's wheel ships,
     from a copy whose SONAME says `libgfortran.so.5` (written once under $CSM_HOME/lib);
  3. Debian's `libopenblas0-pthread` (DYNAMIC_ARCH; told the CPU family when it is too old to know it).

`CSM_OPENBLAS=0` switches it off; `CSM_OPENBLAS_THREADS=N` sets its thread count (default: all cores,
half of them on an oversubscribed machine, see `default_threads`). Nothing here imports MLX or NumPy.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .build import library_dir

ENV_SWITCH = "CSM_OPENBLAS"
ENV_THREADS = "CSM_OPENBLAS_THREADS"
DEBIAN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
)
# What a single-target OpenBLAS build needs from the CPU (x86-64 flags as /proc/cpuinfo names them).
_AVX512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
_TARGET_FLAGS = {
    "SAPPHIRERAPIDS": _AVX512 | {"avx512_bf16", "amx_bf16"},
    "COOPERLAKE": _AVX512 | {"avx512_bf16"},
    "SKYLAKEX": _AVX512,
    "HASWELL": {"avx2", "fma"},
    "ZEN": {"avx2", "fma"},
    "SANDYBRIDGE": {"avx"},
}


@dataclass
class BlasInfo:
    """What `load_openblas` did; the benchmark prints it."""

    loaded: bool = False
    path: str | None = None
    source: str = ""  # "env" | "cmeel-openblas" | "debian" | "preloaded"
    config: str = ""  # openblas_get_config(), e.g. "OpenBLAS 0.3.31 NO_AFFINITY SKYLAKEX MAX_THREADS=4"
    core: str = ""  # openblas_get_corename(), the kernel family in use
    threads: int | None = None
    bound: bool | None = None  # does the process-wide `cblas_sgemm` resolve to this library?
    reason: str = ""  # why nothing was loaded
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not self.loaded:
            return f"reference (MLX's own): {self.reason}" if self.reason else "reference (MLX's own)"
        return f"{self.config or 'OpenBLAS'} [{self.core}] {self.threads} threads ({self.source}: {self.path})"

    def as_dict(self) -> dict:
        return asdict(self)


_info: BlasInfo | None = None
_handles: list[ctypes.CDLL] = []  # keep loaded libraries alive


def blas_info() -> BlasInfo:
    """What was loaded (loading nothing if `load_openblas` never ran)."""
    return _info if _info is not None else BlasInfo(reason="load_openblas() was not called")


def load_openblas() -> BlasInfo:
    """Load an optimised OpenBLAS process-wide, once, before MLX. Returns what happened; never raises."""
    global _info
    if _info is not None:
        return _info
    try:
        _info = _load()
    except Exception as exc:  # a broken optional speed-up must never stop the engine from importing
        _info = BlasInfo(reason=f"failed: {exc}")
    return _info


def _load() -> BlasInfo:
    choice = os.environ.get(ENV_SWITCH, "").strip()
    if choice.lower() in ("0", "off", "false", "no"):
        return BlasInfo(reason=f"switched off ({ENV_SWITCH}={choice})")
    if not sys.platform.startswith("linux"):
        return BlasInfo(reason="not Linux (MLX uses Accelerate on macOS)")
    already = _preloaded_openblas()
    if already is not None:
        return already
    if "mlx.core" in sys.modules:
        return BlasInfo(reason="not loaded (mlx imported first)")

    notes: list[str] = []
    candidates: list[tuple[str, Path]] = []
    if choice and choice.lower() not in ("1", "on", "true", "yes", "auto"):
        candidates.append(("env", Path(choice)))
    else:
        cmeel = _cmeel_library()
        if cmeel is not None:
            problem = _cpu_mismatch(_cmeel_build_config(cmeel))
            if problem:
                notes.append(f"cmeel-openblas skipped: {problem}")
            else:
                candidates.append(("cmeel-openblas", cmeel))
        candidates += [("debian", Path(p)) for p in DEBIAN_PATHS if Path(p).exists()]
    for source, path in candidates:
        try:
            lib = _open(path, source, notes)
        except OSError as exc:
            notes.append(f"{source} {path}: {exc}")
            continue
        return _describe(lib, path, source, notes)
    return BlasInfo(reason="; ".join(notes) or "no OpenBLAS found (pip install cmeel-openblas)", notes=notes)


def _open(path: Path, source: str, notes: list[str]) -> ctypes.CDLL:
    if not path.exists():
        raise OSError("no such file")
    try:
        return _dlopen_global(path, source)
    except OSError as exc:
        if "libgfortran.so.5" not in str(exc):
            raise
    # The library needs libgfortran.so.5 and the system has none: lend it MLX's copy.
    _preload_mlx_gfortran()
    notes.append("libgfortran.so.5 taken from MLX's wheel")
    return _dlopen_global(path, source)


def _dlopen_global(path: Path, source: str) -> ctypes.CDLL:
    core = _coretype_hint() if source == "debian" else None
    saved = os.environ.get("OPENBLAS_CORETYPE")
    if core and saved is None:  # read once by OpenBLAS's constructor; restored right after
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        lib = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
    finally:
        if core and saved is None:
            os.environ.pop("OPENBLAS_CORETYPE", None)
    _handles.append(lib)
    return lib


def _describe(lib: ctypes.CDLL, path: Path, source: str, notes: list[str]) -> BlasInfo:
    info = BlasInfo(loaded=True, path=str(path), source=source, notes=notes)
    for name, attr in (("openblas_get_config", "config"), ("openblas_get_corename", "core")):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            setattr(info, attr, (fn() or b"").decode(errors="replace").strip())
    info.threads = _set_threads(lib)
    info.bound = _resolves_to(lib, "cblas_sgemm")
    return info


def configured_threads() -> int:
    """The thread count the loaded OpenBLAS starts with: CSM_OPENBLAS_THREADS, else default_threads()."""
    wanted = os.environ.get(ENV_THREADS, "").strip()
    try:
        return int(wanted) if wanted else default_threads()
    except ValueError:
        return default_threads()


def _set_threads(lib: ctypes.CDLL) -> int | None:
    get = getattr(lib, "openblas_get_num_threads", None)
    put = getattr(lib, "openblas_set_num_threads", None)
    n = configured_threads()
    if put is not None and n > 0:
        put.argtypes = [ctypes.c_int]
        put(n)
    return int(get()) if get is not None else None


def set_threads(n: int) -> int | None:
    """Change the loaded OpenBLAS's thread count at run time; returns the count in force (None: none loaded)."""
    info = blas_info()
    if not info.loaded or not _handles:
        return None
    lib = ctypes.CDLL(info.path, mode=ctypes.RTLD_GLOBAL)  # the same handle: already loaded
    lib.openblas_set_num_threads.argtypes = [ctypes.c_int]
    lib.openblas_set_num_threads(max(1, int(n)))
    info.threads = int(lib.openblas_get_num_threads())
    return info.threads


@functools.cache
def _numpy_openblas():
    """(set_num_threads, get_num_threads) of NumPy's own OpenBLAS (the scipy-openblas its wheels
    bundle, not the OpenBLAS MLX uses), found once among the loaded libraries; None without one."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line and "numpy" in line}
    except OSError:
        return None
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for put, get in (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                         ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                         ("openblas_set_num_threads", "openblas_get_num_threads")):
            if hasattr(lib, put) and hasattr(lib, get):
                fput, fget = getattr(lib, put), getattr(lib, get)
                fput.argtypes, fput.restype, fget.restype = [ctypes.c_int], None, ctypes.c_int
                return fput, fget
    return None


@contextmanager
def numpy_blas_threads(n: int):
    """`with numpy_blas_threads(1): ...` runs NumPy's own BLAS on n threads inside the block. The
    native backend's prefill does so around its small attention products: NumPy's BLAS threads spin
    after each call and take the cores from the OpenMP products that follow (a 64-row prefill
    measured 0.9-1.0 s with them, 0.4-0.5 s without). Where NumPy's BLAS is another library, or not
    loaded, it does nothing."""
    fns = _numpy_openblas()
    before = fns[1]() if fns is not None else None
    if before is not None and before != n:
        fns[0](int(n))
    try:
        yield
    finally:
        if before is not None and before != n:
            fns[0](before)


def default_threads() -> int:
    """All the cores this process may use, or half of them when the machine is already oversubscribed.

    OpenBLAS's threads spin while they wait for each other, and the frame loop makes ~1000 small
    BLAS calls per frame: when a thread has to share its core, every call stalls. Measured on the
    2-core machine with full-size CSM-1B (fp32), 1 and 2 threads taking turns in one process
    (`python -m engine.bench --compare threads`): 2 threads 1.59x faster at load average 1.3, 1.19x at
    load 2-3; but with more busy processes than cores (load 5-8) the depth decoder ran 2.6-7x slower
    with 2 threads than with 1. So: all cores while the 1-minute load average (read once, when the
    engine loads) is below the core count, else half.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return cores if load < cores else max(1, cores // 2)


def _resolves_to(lib: ctypes.CDLL, symbol: str) -> bool | None:
    """True when the process-wide lookup of `symbol` (what libmlx will bind to) lands in `lib`."""
    try:
        everywhere = ctypes.cast(getattr(ctypes.CDLL(None), symbol), ctypes.c_void_p).value
        ours = ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value
    except AttributeError:
        return None
    return everywhere == ours


def _preloaded_openblas() -> BlasInfo | None:
    """An OpenBLAS already in the global scope (LD_PRELOAD, or loaded by someone else)."""
    try:
        proc = ctypes.CDLL(None)
        fn = proc.openblas_get_config
    except (AttributeError, OSError):
        return None
    path = _library_of(fn)
    if path is None:
        return None
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    _handles.append(lib)
    return _describe(lib, Path(path), "preloaded", [])


def _library_of(fn) -> str | None:
    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    try:
        dladdr = ctypes.CDLL(None).dladdr
    except AttributeError:
        return None
    dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
    out = DlInfo()
    if not dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(out)) or not out.dli_fname:
        return None
    return out.dli_fname.decode()


# --- finding the cmeel wheel and checking it fits this CPU ------------------------------------------


def _dist_file(dist: str, name: str) -> Path | None:
    """The first file of the installed distribution `dist` whose file name starts with `name`."""
    from importlib import metadata

    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    for f in d.files or ():
        if f.name.startswith(name):
            return Path(d.locate_file(f)).resolve()
    return None


def _cmeel_library() -> Path | None:
    path = _dist_file("cmeel-openblas", "libopenblas.so.0")
    return path if path is not None and path.exists() else None


def _cmeel_build_config(lib: Path) -> str:
    pc = lib.parent / "pkgconfig" / "openblas.pc"
    try:
        for line in pc.read_text().splitlines():
            if line.startswith("openblas_config="):
                return line.split("=", 1)[1]
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_mismatch(build_config: str) -> str:
    """Why a single-target build cannot run here ('' when it can, or when it adapts at run time)."""
    if "DYNAMIC_ARCH=OFF" not in build_config or platform.machine() not in ("x86_64", "AMD64"):
        return ""
    words = set(build_config.split())
    target = next((t for t in _TARGET_FLAGS if t in words), None)
    if target is None:
        return f"built for an unknown single CPU target ({build_config.strip()})"
    missing = _TARGET_FLAGS[target] - cpu_flags()
    return f"built for {target}, this CPU lacks {' '.join(sorted(missing))}" if missing else ""


def _coretype_hint() -> str | None:
    """OpenBLAS 0.3.21 (Debian 12) does not know recent Xeons and falls back to a 2004 kernel
    (GEMM 64 vs 260 GFLOP/s here): name the family by the CPU's features instead."""
    if platform.machine() != "x86_64":
        return None
    flags = cpu_flags()
    if _AVX512 | {"avx512_bf16"} <= flags:
        return "COOPERLAKE"
    if _AVX512 <= flags:
        return "SKYLAKEX"
    if {"avx2", "fma"} <= flags:
        return "HASWELL"
    return None


# --- lending MLX's libgfortran under its usual name ---------------------------------------------------


def _preload_mlx_gfortran() -> None:
    libs = _mlx_bundled_libs()
    if libs is None:
        raise OSError("libgfortran.so.5 is missing and MLX's wheel has none to lend "
                      "(install it: apt-get install libgfortran5)")
    for quadmath in sorted(libs.glob("libquadmath*.so*")):  # libgfortran's own dependency
        _handles.append(ctypes.CDLL(str(quadmath), mode=ctypes.RTLD_GLOBAL))
    source = next(iter(sorted(libs.glob("libgfortran*.so*"))), None)
    if source is None:
        raise OSError(f"no libgfortran in {libs}")
    shim = _renamed_copy(source, b"libgfortran.so.5")
    _handles.append(ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL))


def _mlx_bundled_libs() -> Path | None:
    for dist in ("mlx-cpu", "mlx"):
        lib = _dist_file(dist, "libquadmath") and _dist_file(dist, "libgfortran")
        if lib is not None:
            return lib.parent
    return None


def _renamed_copy(source: Path, soname: bytes) -> Path:
    """A copy of the shared library `source` whose SONAME is `soname` (so the dynamic linker takes it
    for a dependency of that name once loaded). Written once; reused while the source is unchanged."""
    stat = source.stat()
    out = library_dir() / f"{soname.decode()}.{stat.st_size}-{int(stat.st_mtime)}" / soname.decode()
    if out.exists():
        return out
    data = bytearray(source.read_bytes())
    offset, length = _soname_slot(data)
    if len(soname) > length:
        raise OSError(f"cannot rename {source.name}: SONAME slot too short")
    data[offset : offset + length] = soname + b"\0" * (length - len(soname))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, out)
    return out


def _soname_slot(elf: bytes) -> tuple[int, int]:
    """(file offset, length) of the DT_SONAME string of a little-endian ELF64 shared library."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise OSError("not a little-endian ELF64 file")
    phoff = struct.unpack_from("<Q", elf, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        raise OSError("no dynamic section")
    tags: dict[int, int] = {}
    for pos in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", elf, pos)
        if tag == 0:
            break
        tags.setdefault(tag, value)
    if 5 not in tags or 14 not in tags:  # DT_STRTAB, DT_SONAME
        raise OSError("no SONAME")
    strtab = next((off + tags[5] - va for va, off, size in loads if va <= tags[5] < va + size), None)
    if strtab is None:
        raise OSError("string table outside the loaded segments")
    start = strtab + tags[14]
    return start, elf.index(b"\0", start) - start
