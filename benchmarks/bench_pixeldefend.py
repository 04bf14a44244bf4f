"""PixelDefend purification: the purifier before issue 19 (one cropped float32 network evaluation
per pixel, skipping unchanged images: commit 16f00d1's ``purify``, kept verbatim below as
``_purify_before``) against ``purify`` now (incremental evaluation in float64).

    python -m pytest benchmarks/bench_pixeldefend.py -o python_files='bench_*.py' --benchmark-only -s

Target (issue 19): at least 10x faster at paper size (PixelCNN++ with nr_filters 160, nr_resnet 5,
nr_stages 3, nr_logistic_mix 10) on one 28x28x1 and one 32x32x3 image. Weights are untrained
(seeded): timing does not depend on them. The images are uniform noise, so purification moves
nearly every value (recorded as ``values_changed``) and the "skip unchanged images" shortcut of the
old purifier does not trivialise it. Also timed: the smoke row's PixelCNN (one 28x28 image, and
a batch of 50 as in the smoke row).

Each test runs the two purifiers in interleaved rounds (old then new, then new then old, ...);
``extra_info`` holds each one's median seconds and their ratio; ``-s`` prints them. The old
purifier takes tens of minutes per paper-size image on one core, so paper-size tests run
``OBFGRAD_BENCH_PIXELDEFEND_PAPER_ROUNDS`` rounds (default 1), the others
``OBFGRAD_BENCH_PIXELDEFEND_ROUNDS`` (default 3). Paper-size tests purify the first
``OBFGRAD_BENCH_PIXELDEFEND_PAPER_ROWS`` rows of the image (default 8; 0 = the whole image) with
both purifiers: the speed-up so measured is a lower bound for whole images, because the old
purifier's network is cropped to rows ``0..i`` at row ``i`` (its cost per row grows with ``i``)
while the incremental purifier's cost per row does not grow.

Output: ``purify`` decides in float64 (exact: see ``obfgrad.defenses.pixeldefend``), the old
purifier in float32, whose choices between bins tied within float32 rounding depend on the batch
and crop. ``values_differing_from_old`` counts the values where the two differ; each test asserts that
``purify``'s first two rows equal those of the float64 cropped loop (``method="crop"``; the unit
tests compare whole images across all methods).
"""

import os
import statistics
import time
from typing import Dict, List, Optional

import pytest
import torch

from obfgrad._checks import check_float, check_images, check_int
from obfgrad.defenses.pixeldefend import purify
from obfgrad.models.pixelcnn import LEVELS, PixelCNN, bin_log_probs
from reproduce.rows.pixeldefend import spec

PAPER = {"nr_filters": 160, "nr_resnet": 5, "nr_stages": 3, "nr_logistic_mix": 10}  # PixelCNN++ CIFAR
SMOKE = {key: value for key, value in spec("smoke").config["pixelcnn"]["arch_kwargs"].items()
         if key not in ("in_channels", "dropout")}  # the smoke row's PixelCNN
EPS_DEFEND = 16 / 255
ROUNDS = int(os.environ.get("OBFGRAD_BENCH_PIXELDEFEND_ROUNDS", "3"))
PAPER_ROUNDS = int(os.environ.get("OBFGRAD_BENCH_PIXELDEFEND_PAPER_ROUNDS", "1"))
PAPER_ROWS = int(os.environ.get("OBFGRAD_BENCH_PIXELDEFEND_PAPER_ROWS", "8"))


@torch.no_grad()
def _purify_before(pixelcnn: PixelCNN, x: torch.Tensor, eps_defend: float,
                   max_positions: Optional[int] = None) -> torch.Tensor:
    """``purify(..., reuse=True)`` as of commit 16f00d1 (the purifier before issue 19), verbatim
    but for the removed ``reuse=False`` branch and the stats."""
    check_images(x, "x")
    radius = int(round(check_float(eps_defend, "eps_defend", low=0.0) * (LEVELS - 1)))
    n, channels, height, width = x.shape
    positions = height * width if max_positions is None else min(check_int(max_positions, "max_positions", low=0),
                                                                   height * width)
    levels = (x.detach() * (LEVELS - 1)).round()
    low, high = (levels - radius).clamp_min(0), (levels + radius).clamp_max(LEVELS - 1)
    current = levels.clone()
    bins = torch.arange(LEVELS, device=x.device, dtype=x.dtype)
    params = None
    rows_valid = torch.zeros(n, dtype=torch.long, device=x.device)  # rows of `params` that are up to date
    dirty = torch.ones(n, dtype=torch.bool, device=x.device)  # changed since its last evaluation
    for position in range(positions):
        i, j = divmod(position, width)
        need = dirty | (rows_valid <= i)
        index = need.nonzero().squeeze(1)
        if index.numel():
            rows = i + 1
            fresh = pixelcnn(current[index, :, :rows] / (LEVELS - 1))
            if params is None:
                params = fresh.new_zeros((n, fresh.shape[1], height, width))
            params[index, :, :rows] = fresh
            rows_valid[index], dirty[index] = rows, False
        for c in range(channels):
            log_probs = bin_log_probs(params[:, :, i, j], current[:, :, i, j] / (LEVELS - 1), c,
                                      pixelcnn.nr_logistic_mix)
            allowed = (bins >= low[:, c, i, j, None]) & (bins <= high[:, c, i, j, None])
            best = log_probs.masked_fill(~allowed, float("-inf")).argmax(dim=1).to(current.dtype)
            dirty |= best != current[:, c, i, j]
            current[:, c, i, j] = best
    return current / (LEVELS - 1)


def _model(channels: int, size: Dict[str, int]) -> PixelCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return PixelCNN(in_channels=channels, dropout=0.0, **size).eval()


def _noise(n: int, channels: int, side: int) -> torch.Tensor:
    return torch.rand((n, channels, side, side), generator=torch.Generator().manual_seed(1))


def _interleaved(benchmark, name: str, model: PixelCNN, x: torch.Tensor, rounds: int, rows: int = 0) -> None:
    """Time the old and the new purifier in alternating order, ``rounds`` rounds each, on the
    first ``rows`` rows of the image (0: all)."""
    seconds: Dict[str, List[float]] = {"old": [], "new": []}
    outputs = {}
    positions = rows * x.shape[-1] if rows else None
    contenders = {"old": lambda: _purify_before(model, x, EPS_DEFEND, positions),
                  "new": lambda: purify(model, x, EPS_DEFEND, positions)}

    def one_round() -> None:
        order = ["old", "new"] if len(seconds["old"]) % 2 == 0 else ["new", "old"]
        for key in order:
            started = time.perf_counter()
            outputs[key] = contenders[key]()
            seconds[key].append(time.perf_counter() - started)

    benchmark.group = f"pixeldefend {name}"
    benchmark.pedantic(one_round, rounds=rounds, iterations=1)
    old, new = statistics.median(seconds["old"]), statistics.median(seconds["new"])
    levels = (x * (LEVELS - 1)).round() / (LEVELS - 1)
    checked = min(2, rows or 2) * x.shape[-1]  # the first two rows, by the float64 one-evaluation-per-pixel loop
    exact = torch.equal(outputs["new"].flatten(2)[:, :, :checked],
                        purify(model, x, EPS_DEFEND, checked, method="crop").flatten(2)[:, :, :checked])
    benchmark.extra_info.update({
        "old_median_s": old, "new_median_s": new, "speedup": old / new, "rounds": rounds,
        "rows_purified": rows or x.shape[-2], "values": x.numel(),
        "values_changed": int((outputs["new"] != levels).sum()),
        "values_differing_from_old": int((outputs["new"] != outputs["old"]).sum()),
        "first_two_rows_equal_float64_crop_loop": exact})
    print(f"\n{name}, {rows or x.shape[-2]} rows: {old / new:.1f}x (old {old:.2f} s, new {new:.2f} s, "
          f"medians of {rounds}; "
          f"values changed {benchmark.extra_info['values_changed']} of {x.numel()}, "
          f"differing from old {benchmark.extra_info['values_differing_from_old']})")
    assert exact
    purified_values = x.numel() * (rows or x.shape[-2]) // x.shape[-2]
    assert benchmark.extra_info["values_changed"] > purified_values // 2  # the shortcuts cannot skip the work


@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32)], ids=["28x28x1", "32x32x3"])
def test_pixeldefend_paper_size_one_image(benchmark, channels, side):
    _interleaved(benchmark, f"paper-size PixelCNN++, one {side}x{side}x{channels} image",
                 _model(channels, PAPER), _noise(1, channels, side), PAPER_ROUNDS, PAPER_ROWS)


@pytest.mark.parametrize("images", [1, 50])
def test_pixeldefend_smoke_size(benchmark, images):
    _interleaved(benchmark, f"smoke-size PixelCNN, {images} 28x28x1 image(s)", _model(1, SMOKE),
                 _noise(images, 1, 28), ROUNDS)

