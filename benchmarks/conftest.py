"""Benchmarks run with 2 threads (the paper-size comparisons in the README assume it)."""

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
