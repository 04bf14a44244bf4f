"""The one place that loads compiled code and picks a backend.

* CPU: the pybind11 extension ``obfgrad._C`` built from ``csrc/cpu/*.cpp``. Without it,
  ops fall back to their pure-torch reference and warn once; ``OBFGRAD_REQUIRE_NATIVE=1``
  turns the fallback into an error (CI sets it so a broken build cannot pass silently).
* CUDA: the drivers in ``csrc/cuda/<op>.cu`` are compiled at run time with NVRTC (through
  CuPy's low-level binding, which needs no GPU to compile), the first time a CUDA tensor
  reaches an op, cached per (op, architecture), and launched on torch's current stream.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = [
    "native",
    "require_native",
    "backend_info",
    "kernel_source_dir",
    "compile_cuda_source",
    "cuda_function",
    "launch_cuda",
]

_REQUIRE_ENV = "OBFGRAD_REQUIRE_NATIVE"
_warned_fallback = False
_warn_lock = threading.Lock()


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
    try:
        from cupy_backends.cuda.libs import nvrtc  # type: ignore
    except ImportError as exc:
        raise RuntimeError(
            "obfgrad's CUDA kernels are compiled with NVRTC through CuPy: "
            "pip install 'obfgrad[cuda]' (cupy-cuda12x)"
        ) from exc
    return nvrtc


NVRTC_OPTIONS = (
    "--std=c++17",
    # No fused multiply-add: products round exactly as on the CPU (built with -ffp-contract=off).
    "--fmad=false",
    "-default-device",
)


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
    program = nvrtc.createProgram(path.read_text(), path.name, [], [])
    options = [f"--gpu-architecture={arch if cubin else arch.replace('sm_', 'compute_')}",
               f"--include-path={root / 'include'}", *NVRTC_OPTIONS]
    try:
        try:
            nvrtc.compileProgram(program, options)
        except Exception as exc:
            raise RuntimeError(f"NVRTC failed on {path.name} ({arch}):\n{nvrtc.getProgramLog(program)}") from exc
        log = nvrtc.getProgramLog(program).strip()
        if "warning" in log.lower():
            raise RuntimeError(f"NVRTC warnings on {path.name} ({arch}):\n{log}")
        return nvrtc.getCUBIN(program) if cubin else nvrtc.getPTX(program)
    finally:
        nvrtc.destroyProgram(program)


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


def launch_cuda(op: str, kernel: str, total: int, args: tuple, *, device: torch.device,
                block: int = 256) -> None:
    """Launch ``kernel`` with one thread per element of ``total`` on torch's current stream.

    Tensor arguments are passed as device pointers; ints as 64-bit, floats as 32-bit.
    """
    import cupy

    if total == 0:
        return
    fn = cuda_function(op, kernel, device)
    grid = (total + block - 1) // block
    packed = []
    for arg in args:
        if isinstance(arg, torch.Tensor):
            packed.append(cupy.uint64(arg.data_ptr()))
        elif isinstance(arg, bool):
            packed.append(cupy.int32(int(arg)))
        elif isinstance(arg, int):
            packed.append(cupy.int64(arg))
        elif isinstance(arg, float):
            packed.append(cupy.float32(arg))
        else:
            raise TypeError(f"launch_cuda: unsupported kernel argument type {type(arg).__name__}")
    stream = torch.cuda.current_stream(device)
    with cupy.cuda.Device(device.index or 0):
        fn((grid,), (block,), tuple(packed), stream=cupy.cuda.ExternalStream(stream.cuda_stream))


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
