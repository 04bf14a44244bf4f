"""Shared test infrastructure.

One CUDA-skip idiom for the whole suite: a test that needs a CUDA device carries ``@pytest.mark.gpu``
(or asks for the ``device`` fixture, whose "cuda" case carries it) and nothing else; this file skips
it, with one reason, where torch sees no CUDA device. ``pytest -m gpu`` (``tools/gpu_check.py``) runs
exactly these tests on a GPU machine. Compiling a CUDA driver needs NVRTC but no device: such a test
asks for the ``nvrtc`` fixture. Without a GPU the CUDA drivers still run, compiled for the host
(tests/cuda_host_shim.py), through the ``cuda_on_host`` fixture. The same way, a test that needs
Fashion-MNIST installed carries ``@pytest.mark.fashion_mnist``."""

import functools
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from cuda_host_shim import HostEmulator, host_compiler

from obfgrad import _native

GOLDEN_TV_QUILT = Path(__file__).resolve().parent / "data" / "golden_tv_quilt.npz"
#: tools/make_golden_tv_quilt.py writes this file byte for byte (fixed zip timestamps).
GOLDEN_TV_QUILT_SHA256 = "0ac6129357cb181e0437cd4201db1717bb4913a8beda8a2dcfaf4cdfbebdc07c"
NO_CUDA_REASON = "needs a CUDA device: torch.cuda.is_available() is False here"


@functools.cache
def _fashion_mnist_present() -> bool:
    from obfgrad.data import DatasetNotFoundError, load_dataset

    try:
        load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFoundError:
        return False
    return True


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip(NO_CUDA_REASON)
    if item.get_closest_marker("fashion_mnist") is not None and not _fashion_mnist_present():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


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


@pytest.fixture(scope="session")
def golden_tv_quilt() -> dict:
    """The independent float64 oracle's arrays for TV and quilting (tools/make_golden_tv_quilt.py),
    checked against their recorded SHA-256 before use."""
    data = GOLDEN_TV_QUILT.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN_TV_QUILT_SHA256, f"{GOLDEN_TV_QUILT} is not the recorded file"
    with np.load(GOLDEN_TV_QUILT, allow_pickle=False) as arrays:
        return {name: arrays[name] for name in arrays.files}
