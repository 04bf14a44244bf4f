"""Shared fixtures: the CUDA drivers run on the host (tests/cuda_host_shim.py)."""

import pytest
from cuda_host_shim import HostEmulator, host_compiler

from obfgrad import _native


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
