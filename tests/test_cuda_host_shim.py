"""The CUDA launch path without a GPU: argument packing, the signature check every launch goes
through, and the host emulation of the drivers (tests/cuda_host_shim.py) that the op tests use.

The op tests (test_thermometer, test_jpeg, test_tv, test_quilt) run each driver's kernels through
the emulation and compare with the CPU driver; this file checks the machinery they rely on."""

import re
import shutil

import numpy as np
import pytest
import torch
from cuda_host_shim import EmulationError, HostDriver

from obfgrad import _native
from obfgrad.ops import thermometer_op as thermometer_module

OPS = ("jpeg", "quilt", "thermometer", "tv")


# ----------------------------------------------------------------------------- signatures


def test_signature_parser_reads_every_supported_type():
    source = """
    // extern "C" __global__ void commented_out(int n) {}
    extern "C" __global__ void k(const float* __restrict__ x, unsigned char *out, long long n,
                                 int flag, float scale, unsigned long long seed, bool b) {}
    extern "C" __global__ void __launch_bounds__(128) bounded(const long long* index) {}
    """
    signatures = _native.parse_kernel_signatures(source)
    assert set(signatures) == {"k", "bounded"}
    assert signatures["k"][:6] == (("x", "pointer"), ("out", "pointer"), ("n", "int64"), ("flag", "int32"),
                                   ("scale", "float32"), ("seed", "int64"))
    assert signatures["k"][6][0] == "b" and "unsupported" in signatures["k"][6][1]
    assert signatures["bounded"] == (("index", "pointer"),)


@pytest.mark.parametrize("op", OPS)
def test_every_kernel_parameter_has_a_packable_type(op):
    signatures = _native.kernel_signatures(op)
    assert signatures, f"no kernels parsed from csrc/cuda/{op}.cu"
    for kernel, params in signatures.items():
        for name, kind in params:
            assert kind in ("pointer", "int64", "int32", "float32"), (kernel, name, kind)


_PTX_KIND = {"u64": "8-byte integer", "s64": "8-byte integer", "b64": "8-byte integer",
             "u32": "4-byte integer", "s32": "4-byte integer", "b32": "4-byte integer", "f32": "float32"}
_SIGNATURE_KIND = {"pointer": "8-byte integer", "int64": "8-byte integer", "int32": "4-byte integer",
                   "float32": "float32"}


@pytest.mark.parametrize("op", OPS)
def test_parsed_signatures_agree_with_the_ptx_nvrtc_emits(op, nvrtc):
    # The parser is what every launch is checked against: NVRTC's own parameter list (PTX
    # .param types) must say the same, kernel by kernel.
    ptx = _native.compile_cuda_source(op, "sm_80", cubin=False).decode()
    entries = {}
    for name, params in re.findall(r"\.entry\s+(\w+)\s*\(([^)]*)\)", ptx):
        entries[name] = [_PTX_KIND[t] for t in re.findall(r"\.param\s+\.(\w+)", params)]
    parsed = {kernel: [_SIGNATURE_KIND[kind] for _, kind in params]
              for kernel, params in _native.kernel_signatures(op).items()}
    assert entries == parsed


# ----------------------------------------------------------------------------- packing


def test_packing_gives_each_python_value_its_kernel_size():
    t = torch.zeros(3)
    packed = _native.pack_kernel_args((t, True, 5, 2.5, -(2**63)))
    assert [value.dtype for value in packed] == [np.uint64, np.int32, np.int64, np.float32, np.int64]
    assert int(packed[0]) == t.data_ptr() and int(packed[1]) == 1 and int(packed[2]) == 5


@pytest.mark.parametrize("bad,error,match", [
    ((torch.zeros(4, 4).t(),), ValueError, "contiguous"),
    ((2**63,), ValueError, "64-bit"),
    (("text",), TypeError, "str"),
])
def test_packing_rejects_what_no_kernel_can_take(bad, error, match):
    with pytest.raises(error, match=match):
        _native.pack_kernel_args(bad)


def test_signature_check_names_the_disagreeing_parameter():
    signature = _native.parse_kernel_signatures('extern "C" __global__ void k(float* x, int n) {}')["k"]
    with pytest.raises(TypeError, match="'n' is int32 .* packs int64"):
        _native.check_kernel_args("k", signature, _native.pack_kernel_args((torch.zeros(1), 7)))
    with pytest.raises(TypeError, match="takes 2 arguments, 1 were packed"):
        _native.check_kernel_args("k", signature, _native.pack_kernel_args((torch.zeros(1),)))
    _native.check_kernel_args("k", signature, _native.pack_kernel_args((torch.zeros(1), True)))


def test_a_driver_taking_int_where_the_op_packs_64_bits_fails_at_launch(tmp_path, monkeypatch, cuda_on_host):
    # The same mistake in a real driver: thermometer.cu with `int levels` while the op passes a
    # Python int (64-bit). The launch stops with a TypeError before any kernel runs.
    root = _native.kernel_source_dir()
    shutil.copytree(root / "include", tmp_path / "include")
    shutil.copytree(root / "cuda", tmp_path / "cuda")
    driver = tmp_path / "cuda" / "thermometer.cu"
    source = driver.read_text()
    assert "long long levels" in source
    driver.write_text(source.replace("long long levels", "int levels"))
    monkeypatch.setattr(_native, "kernel_source_dir", lambda: tmp_path)
    _native.kernel_signatures.cache_clear()
    try:
        with pytest.raises(TypeError, match="thermometer_forward: parameter 'levels' is int32"):
            thermometer_module._forward_cuda(torch.rand(1, 3, 4, 4), 16)
        assert cuda_on_host.launches == []
    finally:
        _native.kernel_signatures.cache_clear()


def test_launch_rejects_unknown_kernels_and_bad_geometry(cuda_on_host):
    x = torch.zeros(4)
    with pytest.raises(ValueError, match="no extern"):
        _native.launch_cuda_grid("thermometer", "no_such_kernel", 1, 32, (x,), device=x.device)
    with pytest.raises(ValueError, match="block"):
        _native.launch_cuda_grid("thermometer", "thermometer_forward", 1, (64, 32), (x,), device=x.device)
    with pytest.raises(ValueError, match="grid"):
        _native.launch_cuda_grid("thermometer", "thermometer_forward", 0, 32, (x,), device=x.device)
    assert cuda_on_host.launches == []


# ----------------------------------------------------------------------------- the emulation itself

_BARRIER_KERNELS = r"""
// Each thread writes its slot, then reads its neighbour's: right only if the barrier holds
// every thread until all have written (run one by one, thread t would read t+1's zero).
extern "C" __global__ void rotate(const float* x, float* out, long long n) {
  __shared__ float slots[256];
  const long long t = threadIdx.x;
  slots[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = slots[(t + 1) % blockDim.x];
}

extern "C" __global__ void divergent(float* out, long long n) {
  if (threadIdx.x % 2 == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}
"""


@pytest.fixture(scope="module")
def barrier_driver(tmp_path_factory, cuda_host_emulator):
    build = tmp_path_factory.mktemp("barrier_kernels")
    source = build / "barrier.cu"
    source.write_text(_BARRIER_KERNELS)
    return HostDriver(source, build, _native.kernel_source_dir() / "include")


def test_emulated_barrier_holds_a_block_until_all_its_threads_arrive(barrier_driver):
    x = torch.arange(3 * 64, dtype=torch.float32)
    out = torch.zeros_like(x)
    barrier_driver.run("rotate", (3,), (64,), _native.pack_kernel_args((x, out, x.numel())))
    assert torch.equal(out.view(3, 64), x.view(3, 64).roll(-1, dims=1))


def test_emulation_reports_a_barrier_that_only_some_threads_reach(barrier_driver):
    out = torch.zeros(32)
    with pytest.raises(EmulationError, match="disagree on __syncthreads"):
        barrier_driver.run("divergent", (1,), (32,), _native.pack_kernel_args((out, 32)))
