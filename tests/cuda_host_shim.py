"""Run the CUDA drivers (``csrc/cuda/<op>.cu``) on the CPU, so CI checks them without a GPU.

Each driver is compiled by the host C++ compiler with :data:`SHIM_HEADER` forced in front of it:
kernels become plain ``extern "C"`` functions, ``threadIdx`` is thread-local, ``__shared__``
arrays are shared by the threads of the block being run, and ``__syncthreads()`` is a real
barrier. :class:`HostEmulator.launch` replaces the one step of ``obfgrad._native`` that touches a
GPU (``_launch_on_device``), so an op's own CUDA path runs unchanged on CPU tensors: its grid
and block, the real argument packing (``pack_kernel_args``) and the signature check
(``check_kernel_args``) all happen before the emulator is reached.

* A kernel that uses ``__syncthreads`` or ``__shared__`` runs each block's threads at the same
  time, one OS thread per CUDA thread, through that barrier. A barrier reached by only some of
  a block's threads (one returned early) is reported as an error, as is a barrier inside a
  kernel run one thread at a time (the emulator decides by the kernel's own text).
* Every other kernel runs its block's threads one after another (much faster, same result
  for kernels whose threads do not communicate).

The arithmetic is IEEE float32 without contraction on both sides (``-ffp-contract=off`` here,
``--fmad=false`` for NVRTC), so a driver that is right here computes the GPU's bits.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np

from obfgrad import _native

SHIM_HEADER = r"""
// Host emulation of the CUDA built-ins the drivers use (tests/cuda_host_shim.py).
#include <chrono>
#include <condition_variable>
#include <mutex>

struct obf_emu_dim3 { unsigned int x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };

obf_emu_dim3 gridDim = {1, 1, 1}, blockDim = {1, 1, 1}, blockIdx = {0, 0, 0};
thread_local obf_emu_dim3 threadIdx = {0, 0, 0};

namespace obf_emu {
std::mutex mutex;
std::condition_variable released;
unsigned int block_threads = 1, waiting = 0, exited = 0;
unsigned long long generation = 0;
bool concurrent = false;
// 1: a barrier in a kernel run one thread at a time; 2: a thread of the block returned while
// others wait at (or later reach) a barrier; 3: a barrier waited 60 s (a deadlock).
int error = 0;
}  // namespace obf_emu

inline void __syncthreads() {
  using namespace obf_emu;
  std::unique_lock<std::mutex> lock(mutex);
  if (!concurrent) { if (!error) error = 1; return; }
  if (exited > 0) { if (!error) error = 2; released.notify_all(); return; }
  const unsigned long long mine = generation;
  if (++waiting == block_threads) {
    waiting = 0;
    ++generation;
    released.notify_all();
    return;
  }
  if (!released.wait_for(lock, std::chrono::seconds(60), [&] { return generation != mine || error != 0; }))
    error = 3;
}

extern "C" void obf_emu_begin_block(unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                    unsigned int by, unsigned int bz, unsigned int ix, unsigned int iy,
                                    unsigned int iz, int concurrent) {
  std::lock_guard<std::mutex> lock(obf_emu::mutex);
  gridDim = {gx, gy, gz};
  blockDim = {bx, by, bz};
  blockIdx = {ix, iy, iz};
  obf_emu::block_threads = bx * by * bz;
  obf_emu::waiting = 0;
  obf_emu::exited = 0;
  obf_emu::concurrent = concurrent != 0;
}
extern "C" void obf_emu_set_thread(unsigned int x, unsigned int y, unsigned int z) { threadIdx = {x, y, z}; }
extern "C" void obf_emu_thread_exit() {
  std::lock_guard<std::mutex> lock(obf_emu::mutex);
  ++obf_emu::exited;
  if (obf_emu::waiting > 0) {
    if (!obf_emu::error) obf_emu::error = 2;
    obf_emu::released.notify_all();
  }
}
extern "C" int obf_emu_take_error() {
  std::lock_guard<std::mutex> lock(obf_emu::mutex);
  const int error = obf_emu::error;
  obf_emu::error = 0;
  return error;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
"""

_ERRORS = {
    1: "__syncthreads() in a kernel the emulator runs one thread at a time (it found no barrier or "
       "__shared__ in the kernel's own body: a helper hides it)",
    2: "threads of one block disagree on __syncthreads() (one returned while others wait at a barrier)",
    3: "a __syncthreads() waited 60 s: deadlock",
}

_CTYPE = {np.dtype(np.uint64): ctypes.c_void_p, np.dtype(np.int64): ctypes.c_longlong,
          np.dtype(np.int32): ctypes.c_int, np.dtype(np.float32): ctypes.c_float}


class EmulationError(RuntimeError):
    """A kernel did something the GPU would not survive (a divergent barrier, a deadlock)."""


def host_compiler() -> Optional[str]:
    return shutil.which("g++") or shutil.which("c++")


def kernel_body(source: str, kernel: str) -> str:
    """The text between the braces of ``extern "C"`` kernel ``kernel`` in ``source``."""
    source = re.sub(r"//[^\n]*", "", source)
    for match in _native._KERNEL_RE.finditer(source):
        if match.group(1) != kernel:
            continue
        start = source.index("{", match.end())
        depth = 0
        for position in range(start, len(source)):
            depth += {"{": 1, "}": -1}.get(source[position], 0)
            if depth == 0:
                return source[start:position + 1]
    raise KeyError(f"no extern \"C\" __global__ {kernel}")


class HostDriver:
    """One CUDA source compiled for the host: its library and which kernels need a barrier."""

    def __init__(self, source_path: Path, build_dir: Path, include_dir: Path):
        compiler = host_compiler()
        if compiler is None:
            raise RuntimeError("no C++ compiler")
        shim = build_dir / "obf_cuda_host_shim.h"
        shim.write_text(SHIM_HEADER)
        library = build_dir / f"{source_path.stem}_on_host.so"
        subprocess.run([compiler, "-x", "c++", "-std=c++17", "-O1", "-shared", "-fPIC", "-pthread",
                        "-ffp-contract=off", "-fno-strict-aliasing", "-include", str(shim), f"-I{include_dir}",
                        str(source_path), "-o", str(library)], check=True, capture_output=True)
        self.source = source_path.read_text()
        self.library = ctypes.CDLL(str(library))
        self.signatures = _native.parse_kernel_signatures(self.source)
        lib = self.library
        lib.obf_emu_begin_block.argtypes = [ctypes.c_uint] * 9 + [ctypes.c_int]
        lib.obf_emu_set_thread.argtypes = [ctypes.c_uint] * 3
        self._concurrent = {}

    def needs_barrier(self, kernel: str) -> bool:
        if kernel not in self._concurrent:
            body = kernel_body(self.source, kernel)
            self._concurrent[kernel] = "__syncthreads" in body or "__shared__" in body
        return self._concurrent[kernel]

    def run(self, kernel: str, grid: tuple, block: tuple, packed: tuple) -> None:
        """One launch: every block in turn, its threads one by one or all at once."""
        grid, block = (tuple(grid) + (1, 1))[:3], (tuple(block) + (1, 1))[:3]
        function = getattr(self.library, kernel)
        function.restype = None
        function.argtypes = [_CTYPE[np.asarray(value).dtype] for value in packed]
        args = [int(value) if isinstance(value, np.integer) else float(value) for value in packed]
        threads = [(x, y, z) for z in range(block[2]) for y in range(block[1]) for x in range(block[0])]
        concurrent = self.needs_barrier(kernel)
        lib = self.library
        pool = ThreadPoolExecutor(max_workers=len(threads)) if concurrent else None

        def thread_body(index):
            lib.obf_emu_set_thread(*index)
            function(*args)
            lib.obf_emu_thread_exit()

        try:
            for bz in range(grid[2]):
                for by in range(grid[1]):
                    for bx in range(grid[0]):
                        lib.obf_emu_begin_block(*grid, *block, bx, by, bz, int(concurrent))
                        if pool is None:
                            for index in threads:
                                thread_body(index)
                        else:
                            for future in [pool.submit(thread_body, index) for index in threads]:
                                future.result()
                        error = lib.obf_emu_take_error()
                        if error:
                            raise EmulationError(f"{kernel}, block ({bx}, {by}, {bz}): {_ERRORS[error]}")
        finally:
            if pool is not None:
                pool.shutdown()


class HostEmulator:
    """Compiles each op's driver on first use; :meth:`launch` stands in for
    ``obfgrad._native._launch_on_device``. ``launches`` records (op, kernel, grid, block)."""

    def __init__(self, build_dir: Path):
        self.build_dir = Path(build_dir)
        self.drivers: dict[str, HostDriver] = {}
        self.launches: list[tuple[str, str, tuple, tuple]] = []

    def driver(self, op: str, source_path: Optional[Path] = None) -> HostDriver:
        if op not in self.drivers:
            root = _native.kernel_source_dir()
            path = source_path or root / "cuda" / f"{op}.cu"
            build = self.build_dir / op
            build.mkdir(parents=True, exist_ok=True)
            self.drivers[op] = HostDriver(Path(path), build, root / "include")
        return self.drivers[op]

    def launch(self, op: str, kernel: str, grid: tuple, block: tuple, packed: tuple, device) -> None:
        self.launches.append((op, kernel, tuple(grid), tuple(block)))
        self.driver(op).run(kernel, grid, block, packed)

    def kernels_launched(self, op: str) -> set[str]:
        return {kernel for launched_op, kernel, _, _ in self.launches if launched_op == op}
