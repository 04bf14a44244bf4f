"""The one place that loads compiled code and picks a backend.

* CPU: the pybind11 extension ``obfgrad._C`` built from ``csrc/cpu/*.cpp``. Without it,
  ops fall back to their pure-torch reference and warn once; ``OBFGRAD_REQUIRE_NATIVE=1``
  turns the fallback into an error (CI sets it so a broken build cannot pass silently).
* CUDA: the drivers in ``csrc/cuda/<op>.cu`` are compiled at run time with NVRTC (through
  CuPy's low-level binding, CuPy for CUDA 12 or 13; it needs no GPU to compile), the first time
  a CUDA tensor reaches an op, cached per (op, architecture), and launched on torch's current
  stream. Every launch's arguments are checked against the kernel's signature parsed from its
  source (an ``int`` parameter fed 64 bits reads garbage on a GPU, silently). Without CuPy, ops
  on CUDA tensors run their pure-torch reference and warn once per op.

:func:`choose_backend` is the one decision every op makes per call: ``cuda``, ``native`` or
``reference`` for a tensor's device.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "choose_backend",
    "cupy_install_hint",
    "native",
    "require_native",
    "backend_info",
    "kernel_source_dir",
    "compile_cuda_source",
    "cuda_function",
    "launch_cuda",
    "launch_cuda_grid",
    "kernel_signatures",
    "parse_kernel_signatures",
    "pack_kernel_args",
]

_REQUIRE_ENV = "OBFGRAD_REQUIRE_NATIVE"
_warned_fallback = False
_warn_lock = threading.Lock()
#: The ops that have warned they run their reference on CUDA tensors (CuPy missing).
_warned_cuda_fallback: set[str] = set()
#: Where an op runs: its CUDA driver (NVRTC through CuPy), the compiled CPU extension, or its
#: pure-torch reference.
BACKENDS = ("cuda", "native", "reference")


def _truthy(value: Optional[str]) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@functools.lru_cache(maxsize=1)
def _load_extension() -> tuple[Any, Optional[str]]:
    try:
        from obfgrad import _C  # type: ignore[attr-defined]
    except ImportError as exc:  # not built, or built for another Python
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


def native() -> Any:
    """The compiled CPU module, or ``None`` (after one warning) when it is unavailable.

    Raises:
        RuntimeError: when ``OBFGRAD_REQUIRE_NATIVE=1`` and the extension cannot load.
    """
    global _warned_fallback
    module, error = _load_extension()
    if module is not None:
        return module
    if _truthy(os.environ.get(_REQUIRE_ENV)):
        raise RuntimeError(
            f"obfgrad's native extension obfgrad._C did not load ({error}) and "
            f"{_REQUIRE_ENV}=1 forbids the pure-torch fallback. Reinstall with a C++17 "
            "compiler and OpenMP available: pip install --force-reinstall --no-deps ."
        )
    with _warn_lock:
        if not _warned_fallback:
            warnings.warn(
                f"obfgrad._C did not load ({error}); using the slower pure-torch reference ops.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_fallback = True
    return None


def cupy_install_hint() -> str:
    """The pip command that installs the CuPy of torch's CUDA major (pyproject's ``cuda12`` and
    ``cuda13`` extras)."""
    major = (torch.version.cuda or "").split(".")[0]
    if major in ("12", "13"):
        return f"pip install 'obfgrad[cuda{major}]' (cupy-cuda{major}x, for torch's CUDA {torch.version.cuda})"
    return ("pip install 'obfgrad[cuda12]' (cupy-cuda12x) or 'obfgrad[cuda13]' (cupy-cuda13x), "
            "matching torch.version.cuda")


@functools.lru_cache(maxsize=1)
def _cupy_error() -> Optional[str]:
    """None when CuPy imports, else why it does not."""
    try:
        import cupy  # noqa: F401
    except Exception as exc:  # ImportError, or a CuPy that fails to find its CUDA libraries
        return f"{type(exc).__name__}: {exc}"
    return None


def _cuda_fallback(op: str) -> str:
    """``reference`` for ``op`` on a CUDA tensor without CuPy, after one warning per op (an error
    under ``OBFGRAD_REQUIRE_NATIVE=1``, as for the CPU extension)."""
    error = _cupy_error()
    if _truthy(os.environ.get(_REQUIRE_ENV)):
        raise RuntimeError(f"obfgrad: CuPy did not load ({error}), so {op} cannot run its CUDA kernels, and "
                           f"{_REQUIRE_ENV}=1 forbids the pure-torch fallback: {cupy_install_hint()}")
    with _warn_lock:
        if op not in _warned_cuda_fallback:
            _warned_cuda_fallback.add(op)
            warnings.warn(f"obfgrad: CuPy did not load ({error}); {op} on CUDA tensors runs its slower pure-torch "
                          f"reference. For the CUDA kernels: {cupy_install_hint()}.", RuntimeWarning, stacklevel=4)
    return "reference"


def choose_backend(op: str, device: torch.device) -> str:
    """Where ``op`` runs for a tensor on ``device``: one of :data:`BACKENDS`.

    * CUDA: ``cuda`` when CuPy loads, else ``reference`` (on the same device) after one
      ``RuntimeWarning`` per op naming the extra to install.
    * CPU: ``native`` when ``obfgrad._C`` loads, else ``reference`` after one warning.
    * any other device: ``reference``.

    ``OBFGRAD_REQUIRE_NATIVE=1`` turns either fallback into a ``RuntimeError``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if _cupy_error() is None else _cuda_fallback(op)
    if device.type == "cpu":
        return "native" if native() is not None else "reference"
    return "reference"


def require_native() -> Any:
    """The compiled CPU module; raises ``RuntimeError`` if it is missing."""
    module, error = _load_extension()
    if module is None:
        raise RuntimeError(f"obfgrad._C is not available: {error}")
    return module


# --------------------------------------------------------------------------- CUDA (NVRTC)


def kernel_source_dir() -> Path:
    """The directory holding ``include/`` and ``cuda/``: the repo's ``csrc`` in a source or
    editable install, else the copy shipped inside the package (``obfgrad/_csrc``)."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "_csrc", package_dir.parent / "csrc"):
        if (candidate / "include" / "obfgrad").is_dir() and (candidate / "cuda").is_dir():
            return candidate
    raise FileNotFoundError(
        "obfgrad: the CUDA kernel sources (csrc/include, csrc/cuda) are not installed; "
        "reinstall obfgrad from a source distribution."
    )


def _nvrtc():
    """CuPy's NVRTC binding. CuPy for CUDA 12 (``cupy-cuda12x``) or 13 (``cupy-cuda13x``) finds
    the NVRTC of its own CUDA major (a wheel, a conda package or the system toolkit)."""
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore
    except ImportError as exc:
        raise RuntimeError(
            f"obfgrad's CUDA kernels are compiled with NVRTC through CuPy: {cupy_install_hint()}"
        ) from exc
    return nvrtc


NVRTC_OPTIONS = (
    "--std=c++17",
    # No fused multiply-add: products round exactly as on the CPU (built with -ffp-contract=off).
    "--fmad=false",
    "-default-device",
)


def _loaded_library(stem: str) -> Optional[Path]:
    """Path of the shared library ``<stem>.so*`` mapped into this process (Linux), if any."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                if f"/{stem}.so" in path:
                    return Path(path)
    except OSError:
        pass
    return None


def _preload_nvrtc_builtins(nvrtc) -> bool:
    """Load ``libnvrtc-builtins.so.<major>.<minor>`` from the directory of the libnvrtc in use.

    NVRTC opens its builtins library by name at the first compile; a wheel's lib/ directory
    (``nvidia/cu13/lib``, ``nvidia/cuda_nvrtc/lib``) is on no search path, so that fails unless
    the library is already loaded. Returns whether it loaded one."""
    import ctypes

    library = _loaded_library("libnvrtc")
    if library is None:
        return False
    major, minor = nvrtc.getVersion()
    builtins = library.parent / f"libnvrtc-builtins.so.{major}.{minor}"
    if not builtins.is_file():
        return False
    ctypes.CDLL(str(builtins), mode=ctypes.RTLD_GLOBAL)
    return True


def _compile_program(nvrtc, source: str, name: str, options: list[str]) -> tuple[Any, str]:
    """(program, log) after one compile, retried once when NVRTC could not open its builtins."""
    for attempt in range(2):
        program = nvrtc.createProgram(source, name, [], [])
        try:
            nvrtc.compileProgram(program, options)
            return program, nvrtc.getProgramLog(program)
        except Exception as exc:
            log = nvrtc.getProgramLog(program)
            nvrtc.destroyProgram(program)
            if attempt == 0 and "libnvrtc-builtins" in log and _preload_nvrtc_builtins(nvrtc):
                continue
            raise RuntimeError(f"NVRTC failed on {name} ({options[0]}):\n{log}") from exc
    raise AssertionError("unreachable")


def compile_cuda_source(op: str, arch: str = "sm_80", *, cubin: bool = True) -> bytes:
    """Compile ``csrc/cuda/<op>.cu`` with NVRTC for ``arch`` and return the CUBIN (or PTX).

    Works without a GPU: this is what ``nox -s cuda`` runs for every driver. Raises
    ``RuntimeError`` carrying NVRTC's log on any error or warning.
    """
    nvrtc = _nvrtc()
    root = kernel_source_dir()
    path = root / "cuda" / f"{op}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"op: no CUDA driver {path}")
    options = [f"--gpu-architecture={arch if cubin else arch.replace('sm_', 'compute_')}",
               f"--include-path={root / 'include'}", *NVRTC_OPTIONS]
    program, log = _compile_program(nvrtc, path.read_text(), path.name, options)
    try:
        if "warning" in log.lower():
            raise RuntimeError(f"NVRTC warnings on {path.name} ({arch}):\n{log.strip()}")
        return nvrtc.getCUBIN(program) if cubin else nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)


# --------------------------------------------------------------------------- kernel arguments
#
# A kernel receives each argument at the size its C signature declares; a Python int packed as
# 64-bit into an `int` parameter (or the reverse) silently reads garbage. Every launch is
# therefore checked against the signature parsed from the driver's source.

#: Argument kinds: what a Python value is packed as, and what a C parameter type expects.
_PACKED_KIND = {np.dtype(np.uint64): "pointer", np.dtype(np.int64): "int64",
                np.dtype(np.int32): "int32", np.dtype(np.float32): "float32"}
_C_TYPE_KIND = {
    "long long": "int64", "long long int": "int64", "signed long long": "int64",
    "unsigned long long": "int64", "unsigned long long int": "int64", "int64_t": "int64",
    "uint64_t": "int64", "index_t": "int64", "obfgrad::index_t": "int64",
    "int": "int32", "signed int": "int32", "unsigned int": "int32", "unsigned": "int32",
    "int32_t": "int32", "uint32_t": "int32", "float": "float32",
}
_BOUNDS = r"(?:__launch_bounds__\s*\([^)]*\)\s*)?"
_KERNEL_RE = re.compile(r'extern\s+"C"\s+__global__\s+' + _BOUNDS + r"void\s+" + _BOUNDS + r"(\w+)\s*\(([^)]*)\)")


def _parameter_kind(declaration: str) -> tuple[str, str]:
    """(name, kind) of one C parameter declaration such as ``const float* __restrict__ x``."""
    declaration = " ".join(declaration.split())
    match = re.fullmatch(r"(.*?[\s*&])(\w+)", declaration)
    if match is None:
        raise ValueError(f"cannot parse the kernel parameter {declaration!r}")
    type_text, name = match.group(1), match.group(2)
    if "*" in type_text:
        return name, "pointer"
    words = [w for w in type_text.split() if w not in ("const", "volatile", "__restrict__")]
    base = " ".join(words)
    return name, _C_TYPE_KIND.get(base, f"unsupported C type {base!r}")


def parse_kernel_signatures(source: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """``{kernel: ((parameter, kind), ...)}`` for every ``extern "C" __global__`` function of a
    CUDA source; kinds are ``pointer``, ``int64``, ``int32``, ``float32`` (or a description of an
    unsupported type, which no packed argument matches)."""
    source = re.sub(r"//[^\n]*", "", source)
    signatures = {}
    for match in _KERNEL_RE.finditer(source):
        params = [p for p in match.group(2).split(",") if p.strip() and p.strip() != "void"]
        signatures[match.group(1)] = tuple(_parameter_kind(p) for p in params)
    return signatures


@functools.cache
def kernel_signatures(op: str) -> dict[str, tuple[tuple[str, str], ...]]:
    """The parsed signatures of ``csrc/cuda/<op>.cu`` (see :func:`parse_kernel_signatures`)."""
    path = kernel_source_dir() / "cuda" / f"{op}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"op: no CUDA driver {path}")
    return parse_kernel_signatures(path.read_text())


def pack_kernel_args(args: tuple) -> tuple[np.generic, ...]:
    """The values a kernel is launched with: tensors as their address (``uint64``), ``bool`` as
    ``int32``, ``int`` as ``int64``, ``float`` as ``float32``. Tensors must be contiguous (every
    kernel indexes dense memory)."""
    packed: list[np.generic] = []
    for position, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            if not arg.is_contiguous():
                raise ValueError(f"args[{position}]: a kernel takes contiguous tensors only")
            packed.append(np.uint64(arg.data_ptr()))
        elif isinstance(arg, bool):
            packed.append(np.int32(int(arg)))
        elif isinstance(arg, int):
            if not -(2**63) <= arg < 2**63:
                raise ValueError(f"args[{position}]: {arg} does not fit a 64-bit kernel argument")
            packed.append(np.int64(arg))
        elif isinstance(arg, float):
            packed.append(np.float32(arg))
        else:
            raise TypeError(f"args[{position}]: unsupported kernel argument type {type(arg).__name__}")
    return tuple(packed)


def check_kernel_args(kernel: str, signature: tuple[tuple[str, str], ...], packed: tuple) -> None:
    """Raise ``TypeError`` unless ``packed`` matches ``signature`` argument for argument."""
    kinds = [_PACKED_KIND.get(np.asarray(value).dtype, str(np.asarray(value).dtype)) for value in packed]
    if len(kinds) != len(signature):
        raise TypeError(f"{kernel}: takes {len(signature)} arguments, {len(kinds)} were packed")
    for (name, expected), got in zip(signature, kinds):
        if expected != got:
            raise TypeError(f"{kernel}: parameter {name!r} is {expected} in the kernel's signature, "
                            f"but the launch packs {got}")


# --------------------------------------------------------------------------- launching

_cuda_modules: dict[tuple[str, str], Any] = {}
_cuda_lock = threading.Lock()


def _device_arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def cuda_function(op: str, kernel: str, device: torch.device) -> Any:
    """The compiled ``extern "C"`` kernel ``kernel`` of ``csrc/cuda/<op>.cu`` for ``device``,
    built on first use and cached."""
    import cupy  # noqa: F401  (imported for its CUDA context handling)
    from cupy.cuda import function

    arch = _device_arch(device)
    key = (op, arch)
    with _cuda_lock:
        module = _cuda_modules.get(key)
        if module is None:
            module = function.Module()
            module.load(compile_cuda_source(op, arch))
            _cuda_modules[key] = module
    return module.get_function(kernel)


def _launch_on_device(op: str, kernel: str, grid: tuple[int, ...], block: tuple[int, ...],
                      packed: tuple, device: torch.device) -> None:
    """Run one launch on ``device``, on torch's current stream (the step the host-emulation
    tests replace, after the packing and the signature check)."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(f"obfgrad's CUDA kernels are launched through CuPy: {cupy_install_hint()}") from exc

    fn = cuda_function(op, kernel, device)
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index if device.index is not None else torch.cuda.current_device()):
        fn(grid, block, packed, stream=cupy.cuda.ExternalStream(stream.cuda_stream))


def _launch_dims(value, what: str) -> tuple[int, ...]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims):
        raise ValueError(f"{what}: expected 1 to 3 positive ints, got {value!r}")
    return dims


def launch_cuda_grid(op: str, kernel: str, grid, block, args: tuple, *, device: torch.device) -> None:
    """Launch ``kernel`` of ``csrc/cuda/<op>.cu`` over ``grid`` blocks of ``block`` threads on
    torch's current stream, after checking the packed arguments against its signature."""
    grid, block = _launch_dims(grid, "grid"), _launch_dims(block, "block")
    if math.prod(block) > 1024:
        raise ValueError(f"block: at most 1024 threads per block, got {block}")
    signatures = kernel_signatures(op)
    if kernel not in signatures:
        raise ValueError(f"kernel: csrc/cuda/{op}.cu has no extern \"C\" __global__ {kernel}")
    packed = pack_kernel_args(args)
    check_kernel_args(kernel, signatures[kernel], packed)
    _launch_on_device(op, kernel, grid, block, packed, device)


def launch_cuda(op: str, kernel: str, total: int, args: tuple, *, device: torch.device,
                block: int = 256) -> None:
    """Launch ``kernel`` with one thread per element of ``total`` (1-D grid) on torch's current
    stream; arguments are packed and checked as in :func:`launch_cuda_grid`."""
    if total == 0:
        return
    launch_cuda_grid(op, kernel, (total + block - 1) // block, block, args, device=device)


def _cuda_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch_cuda_available": torch.cuda.is_available()}
    try:
        import cupy

        state["cupy"] = cupy.__version__
    except Exception as exc:  # ImportError, or a CuPy that fails to find CUDA libraries
        state["cupy"] = None
        state["cupy_error"] = f"{type(exc).__name__}: {exc}"
    try:
        state["nvrtc"] = ".".join(map(str, _nvrtc().getVersion()))
        state["nvrtc_library"] = str(_loaded_library("libnvrtc"))
    except Exception as exc:
        state["nvrtc"] = None
        state["nvrtc_error"] = f"{type(exc).__name__}: {exc}"
    if torch.cuda.is_available():
        state["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    state["compiled_kernels"] = sorted(f"{op}@{arch}" for op, arch in _cuda_modules)
    return state


def backend_info() -> dict[str, Any]:
    """What is active: the native extension (version, build, OpenMP threads), torch, and the
    CUDA/CuPy/NVRTC state."""
    module, error = _load_extension()
    cpu: dict[str, Any]
    if module is None:
        cpu = {"backend": "reference (pure torch)", "native": False, "error": error}
    else:
        cpu = {
            "backend": "native",
            "native": True,
            "version": module.__version__,
            "openmp_threads": module.openmp_max_threads(),
            "build": dict(module.build_info),
            "path": getattr(module, "__file__", None),
        }
    return {"cpu": cpu, "cuda": _cuda_state(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}
