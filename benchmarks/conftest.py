"""Benchmarks run with 2 threads (the paper-size comparisons in the README assume it); as in the
tests, ``@pytest.mark.gpu`` means a CUDA device is needed, and such a benchmark is skipped without one."""

import os

import pytest
import torch

BENCH_THREADS = int(os.environ.get("OBFGRAD_BENCH_THREADS", "2"))


@pytest.fixture(autouse=True)
def _fixed_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(BENCH_THREADS)
    try:
        from obfgrad import _native

        module = _native.native()
        if module is not None:
            module.set_num_threads(BENCH_THREADS)
    except Exception:
        pass
    yield
    torch.set_num_threads(previous)


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device: torch.cuda.is_available() is False here")
