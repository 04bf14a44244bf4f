"""Shared test infrastructure.

One CUDA-skip idiom for the whole suite: a test that needs a CUDA device carries ``@pytest.mark.gpu``
(or asks for the ``device`` fixture, whose "cuda" case carries it) and nothing else; this file skips
it, with one reason, where torch sees no CUDA device. ``pytest -m gpu`` (``tools/gpu_check.py``) runs
exactly these tests on a GPU machine. Compiling a CUDA driver needs NVRTC but no device: such a test
asks for the ``nvrtc`` fixture. Without a GPU the CUDA drivers still run, compiled for the host
(tests/cuda_host_shim.py), through the ``cuda_on_host`` fixture."""

import pytest
import torch
from cuda_host_shim import HostEmulator, host_compiler

from obfgrad import _native

NO_CUDA_REASON = "needs a CUDA device: torch.cuda.is_available() is False here"


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(NO_CUDA_REASON)


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def device(request) -> torch.device:
    """Each device a test should hold on: the CPU, and the first CUDA device (gpu-marked)."""
    return torch.device(request.param)


@pytest.fixture
def nvrtc():
    """CuPy's NVRTC bindings, which compile the CUDA drivers (no device needed)."""
    return pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy (NVRTC) is not installed")


@pytest.fixture(scope="session")
def cuda_host_emulator(tmp_path_factory):
    """Compiles each op's CUDA driver for the CPU on first use (once per test session)."""
    if host_compiler() is None:
        pytest.skip("no C++ compiler to build the CUDA drivers for the host")
    return HostEmulator(tmp_path_factory.mktemp("cuda_on_host"))


@pytest.fixture
def cuda_on_host(cuda_host_emulator, monkeypatch):
    """For this test, every CUDA launch of obfgrad (after its packing and signature check) runs
    the host-compiled driver; returns the emulator (``launches`` lists what ran)."""
    monkeypatch.setattr(_native, "_launch_on_device", cuda_host_emulator.launch)
    cuda_host_emulator.launches.clear()
    return cuda_host_emulator
