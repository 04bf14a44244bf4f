"""One step of the paper's EOT + BPDA attack on Guo et al.'s TV minimisation and image quilting at
299x299 (one image, one EOT draw), with obfgrad's native ops and with the pure-torch/numpy
reference ops (pytest-benchmark; compare the two within one run).

The classifier is a small CNN, not InceptionV3: the step's cost here is the transform's (forward
through the real transform, BPDA identity backward); add InceptionV3's forward + backward
(``python -m reproduce.estimate`` measures it on your device) for the paper profile's step.
Quilting searches a 10,000-patch natural-image database (``bench_quilt.py``'s source images; the
paper's has 1,000,000 patches, and the search is the part that grows with it). The reference's
brute-force search holds the full query-by-database distance matrix: at 100,000 patches it needs
more than 24 GB, so both backends use 10,000 here.

Run: ``PYTHONPATH=. python -m pytest benchmarks/bench_guo_attack.py --benchmark-only``
"""

import pytest
import torch
from bench_quilt import held_out_images  # benchmarks/ is on sys.path under pytest
from torch import nn

from obfgrad._native import native
from obfgrad.attacks import PGD
from obfgrad.data.patch_db import skimage_patch_database
from obfgrad.defenses.input_transforms import ImageQuilting, TransformedClassifier, TVMinimization

C = native()
EPS = 0.05 * 299  # Guo's l2 bound at 299x299 (0.05 RMS over pixels)


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 1000)).eval()


@pytest.fixture(scope="module")
def image():
    return held_out_images(1), torch.tensor([1])


@pytest.fixture(scope="module")
def database():
    return skimage_patch_database(10_000)


def _one_step(transform, image):
    x, y = image
    model = TransformedClassifier(transform, _classifier())
    attack = PGD(distance="l2", eps=EPS, steps=1, step_size=EPS / 10, loss="ce", early_stop=False)
    return attack(model, x, y)


@pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_tv_attack_step_299(benchmark, image, backend):
    transform = TVMinimization(0.5, 0.03, bpda=True, backend=backend, seed=0)
    benchmark.pedantic(_one_step, args=(transform, image), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.skipif(C is None, reason="obfgrad._C is not built")
@pytest.mark.parametrize("backend", ["native", "reference"])
def test_quilting_attack_step_299(benchmark, image, database, backend):
    transform = ImageQuilting(database, 10, 2, bpda=True, backend=backend, seed=0)
    rounds = 3 if backend == "native" else 1  # the reference step takes minutes
    benchmark.pedantic(_one_step, args=(transform, image), rounds=rounds, iterations=1,
                       warmup_rounds=1 if backend == "native" else 0)
