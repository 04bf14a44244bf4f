"""Masked TV minimisation: scikit-image fidelity, the paper's masked update, the red-black
float64 reference, seeds and mask, the identity BPDA backward, and bad input.

Oracles:
  * scikit-image's ``denoise_tv_bregman(isotropic=False)`` for ``keep_prob = 1``, called one
    channel at a time (with ``channel_axis``, scikit-image 0.26 starts channels >= 1 from the
    previous channel's output in its d/b buffers, a transient that its early stop freezes);
  * ``paper_bregman`` (tests/paper_bregman.py): a float64 transcription of the raster loop of Athalye et al.'s
    ``inputtransformations/defense.py:bregman`` with the mask, with either boundary rule (the
    paper's copy reflects the bottom/right ghost at H-2/W-2, ``border="reflect"``; scikit-image
    copies H-1/W-1, ``border="skimage"``, the op's default);
  * ``reference``: the op module's pure-torch float64 solver (red-black or raster).
The authors' own outputs (golden arrays) are checked in tests/test_authors_golden.py.
"""

import math

import numpy as np
import pytest
import torch
from paper_bregman import paper_bregman

from obfgrad import _native
from obfgrad.ops import tv_op as tv_module
from obfgrad.ops.tv_op import BORDERS, SWEEPS, reference, tv_mask, tv_minimize

skimage_restoration = pytest.importorskip("skimage.restoration")
skimage_data = pytest.importorskip("skimage.data")

WEIGHT = 2.0 / 0.03  # the paper's data weight


def _random_images(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _natural_images():
    """Colour and grayscale crops of scikit-image's bundled photographs, NCHW in [0, 1]."""
    colour = torch.from_numpy(skimage_data.astronaut()[100:164, 180:260].copy()).permute(2, 0, 1)
    gray = torch.from_numpy(skimage_data.camera()[200:261:1, 150:221].copy())[None]
    return {"astronaut": colour[None].float() / 255, "camera": gray[None].float() / 255}


def _skimage_tv(x, weight, max_iter, eps):
    """scikit-image's anisotropic split Bregman, one grayscale call per channel (float64)."""
    out = torch.empty_like(x, dtype=torch.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            plane = x[n, c].double().numpy()
            out[n, c] = torch.from_numpy(np.asarray(skimage_restoration.denoise_tv_bregman(
                plane, weight=weight, max_num_iter=max_iter, eps=eps, isotropic=False)).reshape(plane.shape))
    return out


# ------------------------------------------------------------------ scikit-image fidelity


@pytest.mark.parametrize("shape", [(1, 1, 2, 3), (1, 1, 5, 7), (2, 3, 9, 6), (1, 3, 33, 20)])
@pytest.mark.parametrize("eps", [1e-3, 0.0])
def test_raster_sweep_matches_skimage_on_random_images(shape, eps):
    x = _random_images(shape, seed=shape[-1])
    theirs = _skimage_tv(x, WEIGHT, 60, eps)
    # scikit-image stops each channel on its own RMS change; the op stops an image on the RMS
    # over all its channels (the paper's rule). One channel at a time the rules coincide, and
    # the same order of operations in float32 against float64 agrees to rounding.
    per_channel = torch.cat([tv_minimize(x[:, c:c + 1], 1.0, tol=eps, max_iter=60, sweep="raster", seed=0)
                             for c in range(x.shape[1])], dim=1).double()
    assert (per_channel - theirs).abs().max().item() < 1e-5
    # Whole colour images: only the stopping iteration of some channels can differ.
    joint = tv_minimize(x, 1.0, tol=eps, max_iter=60, sweep="raster", seed=0).double()
    assert (joint - theirs).abs().mean().item() < 1e-3


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_raster_sweep_matches_skimage_on_natural_images_at_paper_tolerance(name):
    x = _natural_images()[name]
    theirs = _skimage_tv(x, WEIGHT, 100, 1e-3)
    per_channel = torch.cat([tv_minimize(x[:, c:c + 1], 1.0, 0.03, tol=1e-3, max_iter=100, sweep="raster", seed=0)
                             for c in range(x.shape[1])], dim=1).double()
    assert (per_channel - theirs).abs().max().item() < 1e-5
    joint = tv_minimize(x, 1.0, 0.03, tol=1e-3, max_iter=100, sweep="raster", seed=0).double()
    assert (joint - theirs).abs().mean().item() < 1e-3


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_red_black_sweep_reaches_skimages_fixed_point(name):
    """Red-black and raster Gauss-Seidel are different iterations with the same fixed point: the
    gap shrinks from ~2e-3 (at the paper's tolerance, ~10 iterations) to < 1e-4 at 100
    iterations and < 1e-5 at convergence."""
    x = _natural_images()[name]
    gaps = []
    for eps, iterations in [(1e-3, 100), (0.0, 100), (1e-6, 3000)]:
        ours = tv_minimize(x, 1.0, tol=eps, max_iter=iterations, seed=0).double()
        gaps.append((ours - _skimage_tv(x, WEIGHT, iterations, eps)).abs().mean().item())
    assert gaps[0] < 5e-3
    assert gaps[1] < 1e-4
    assert gaps[2] < 1e-5  # float32 rounding and the joint-channel stop set the floor
    assert gaps[0] > 100 * gaps[2]


def test_red_black_matches_skimage_within_1e3_after_100_iterations_on_random_images():
    x = _random_images((2, 3, 31, 29), seed=5)
    ours = tv_minimize(x, 1.0, tol=0.0, max_iter=100, seed=0).double()
    assert (ours - _skimage_tv(x, WEIGHT, 100, 0.0)).abs().mean().item() < 1e-3


# ------------------------------------------------------------------ the paper's masked update


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 3), (1, 1, 5, 7), (1, 3, 12, 10)])
@pytest.mark.parametrize("eps", [1e-3, 0.0])
@pytest.mark.parametrize("border", ["skimage", "reflect"])
def test_raster_sweep_matches_paper_masked_update(shape, eps, border):
    x = _random_images(shape, seed=11)
    mask = tv_mask(x, 0.5, seed=4)
    ours, iterations = tv_minimize(x, 0.5, tol=eps, max_iter=40, seed=4, sweep="raster", border=border,
                                   return_iterations=True)
    theirs, paper_iterations = paper_bregman(x[0].double().numpy(), mask[0, 0].numpy(), WEIGHT, eps, 40, border)
    if eps > 0:  # with eps = 0 a converged image stops on float32 rounding noise
        assert iterations.item() == paper_iterations
    assert np.abs(ours[0].double().numpy() - theirs).max() < 1e-5


@pytest.mark.parametrize("border", ["skimage", "reflect"])
def test_float64_raster_reference_is_the_paper_loop(border):
    # Same order of operations in float64: equal to float64 rounding, same stopping iteration.
    x = _random_images((1, 3, 9, 11), seed=12)
    mask = tv_mask(x, 0.5, seed=8)
    ours, iterations = reference(x, mask=mask, tol=1e-3, max_iter=40, sweep="raster", border=border,
                                 return_iterations=True)
    theirs, paper_iterations = paper_bregman(x[0].double().numpy(), mask[0, 0].numpy(), WEIGHT, 1e-3, 40, border)
    assert iterations.item() == paper_iterations
    assert np.abs(reference(x.double(), mask=mask, tol=1e-3, max_iter=40, sweep="raster",
                            border=border)[0].numpy() - theirs).max() < 1e-12
    assert np.abs(ours[0].double().numpy() - theirs).max() < 1e-6  # rounded to x's dtype, float32


def test_the_two_borders_differ_only_at_the_bottom_and_right():
    x = _natural_images()["astronaut"]
    skimage_border = tv_minimize(x, 1.0, tol=0.0, max_iter=5, seed=0, sweep="raster")
    reflect_border = tv_minimize(x, 1.0, tol=0.0, max_iter=5, seed=0, sweep="raster", border="reflect")
    gap = (skimage_border - reflect_border).abs()[0].amax(dim=0)
    # Five raster sweeps carry the bottom/right ghost's influence a few pixels up and left only.
    assert gap[-1].max() > 1e-2 and gap[:, -1].max() > 1e-2
    assert gap[:-8, :-8].max().item() == 0.0


def test_given_mask_is_the_seeded_mask_replayed():
    x = _random_images((2, 3, 13, 10), seed=3)
    for sweep in ("red_black", "raster"):
        seeded = tv_minimize(x, 0.5, seed=17, sweep=sweep, border="reflect")
        given = tv_minimize(x, mask=tv_mask(x, 0.5, seed=17), sweep=sweep, border="reflect")
        assert torch.equal(given, seeded)
    mask = tv_mask(x, 0.5, seed=17)
    assert torch.equal(tv_minimize(x, mask=mask[:, 0]), tv_minimize(x, mask=mask))  # (N, H, W) works too
    assert not torch.equal(tv_minimize(x, mask=~mask), tv_minimize(x, mask=mask))


@pytest.mark.parametrize("sweep", ["red_black", "raster"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 3), (2, 3, 9, 7), (3, 1, 16, 17)])
def test_native_matches_reference_with_reflect_border_and_given_mask(shape, sweep):
    x = _random_images(shape, seed=sum(shape))
    mask = tv_mask(x, 0.6, seed=2)
    ours, iterations = tv_minimize(x, mask=mask, tol=1e-3, max_iter=30, sweep=sweep, border="reflect",
                                   return_iterations=True)
    theirs, reference_iterations = reference(x, mask=mask, tol=1e-3, max_iter=30, sweep=sweep, border="reflect",
                                             return_iterations=True)
    assert torch.equal(iterations, reference_iterations)
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_red_black_matches_paper_masked_update_within_1e3_on_natural_images(name):
    """Masked (keep_prob 0.5) red-black against the paper's raster loop after 100 iterations:
    the dropped pixels are pure TV inpainting, which converges slowly, so the two orders still
    differ by a few 1e-4 on photographs (on white noise the gap is ~1e-2, see obfgrad.ops.tv_op)."""
    x = _natural_images()[name][:, :, :24, :28]
    mask = tv_mask(x, 0.5, seed=9)
    ours = tv_minimize(x, 0.5, tol=0.0, max_iter=100, seed=9)
    theirs, _ = paper_bregman(x[0].double().numpy(), mask[0, 0].numpy(), WEIGHT, 0.0, 100)
    assert np.abs(ours[0].double().numpy() - theirs).mean() < 1e-3


def test_one_pixel_image_is_unchanged():
    # The ghost ring repeats the pixel, so there is no gradient to remove, kept or dropped.
    x = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    for keep_prob in (1.0, 0.5):
        assert torch.equal(tv_minimize(x, keep_prob, seed=3), x)


# ------------------------------------------------------------------ native == float64 reference


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 3), (3, 1, 5, 7), (2, 3, 16, 17), (4, 3, 32, 32)])
@pytest.mark.parametrize("keep_prob", [1.0, 0.5])
def test_native_matches_reference_on_random_images(shape, keep_prob):
    x = _random_images(shape, seed=shape[0] + shape[-1])
    ours = tv_minimize(x, keep_prob, tol=0.0, max_iter=50, seed=21)
    theirs = reference(x, keep_prob, tol=0.0, max_iter=50, seed=21)
    assert (ours - theirs).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["astronaut", "camera"])
def test_native_matches_reference_on_natural_images_with_paper_parameters(name):
    x = _natural_images()[name]
    ours, iterations = tv_minimize(x, seed=2, return_iterations=True)
    theirs, reference_iterations = reference(x, seed=2, return_iterations=True)
    assert torch.equal(iterations, reference_iterations)
    assert (ours - theirs).abs().mean().item() < 1e-6
    assert (ours - theirs).abs().max().item() < 1e-4


def test_empty_batch():
    x = torch.rand(0, 3, 8, 8)
    out, iterations = tv_minimize(x, seed=0, return_iterations=True)
    assert out.shape == x.shape and iterations.shape == (0,)


def test_each_image_stops_at_its_own_tolerance():
    x = _random_images((3, 3, 20, 20), seed=1)
    x[1] = 0.5  # a constant image converges in one iteration
    mask = tv_mask(x, 0.5, seed=5)
    out, iterations = tv_minimize(x, 0.5, seed=5, return_iterations=True)
    assert iterations[1].item() == 1 and iterations[0].item() > 1 and iterations[2].item() > 1
    for n in range(3):  # each image alone, with its slice of the batch mask, gives the same result
        alone, alone_iterations = reference(x[n:n + 1], mask=mask[n:n + 1], return_iterations=True)
        assert alone_iterations.item() == iterations[n].item()
        assert (alone - out[n:n + 1]).abs().max().item() < 1e-4


def test_result_does_not_depend_on_thread_count():
    module = _native.native()
    if module is None:
        pytest.skip("the native extension is not built")
    x = _random_images((3, 3, 24, 24), seed=8)
    previous = module.openmp_max_threads()
    try:
        module.set_num_threads(1)
        one = tv_minimize(x, seed=1)
        module.set_num_threads(2)
        two = tv_minimize(x, seed=1)
        three = tv_minimize(x[:1], seed=1)  # one image, rows split among threads
    finally:
        module.set_num_threads(previous)
    assert torch.equal(one, two)
    assert torch.equal(three, one[:1])


def test_channels_share_the_mask():
    x = _random_images((1, 1, 16, 16), seed=3).expand(1, 3, 16, 16).contiguous()
    out = tv_minimize(x, 0.5, seed=6)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_other_dtypes_and_non_contiguous_input():
    x = _random_images((2, 3, 10, 12), seed=4)
    expected = tv_minimize(x, seed=1)
    out64 = tv_minimize(x.double(), seed=1)
    assert out64.dtype == torch.float64 and torch.equal(out64.float(), expected)
    strided = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not strided.is_contiguous()
    assert torch.equal(tv_minimize(strided, seed=1), expected)


def test_reference_is_the_fallback_without_native_code(monkeypatch):
    x = _random_images((2, 3, 9, 9), seed=2)
    expected = reference(x, seed=4).float()
    monkeypatch.setattr(_native, "native", lambda: None)
    assert torch.allclose(tv_minimize(x, seed=4), expected, atol=0, rtol=0)
    assert torch.equal(tv_mask(x, 0.5, seed=4), tv_module._mask_reference(2, 9, 9, 0.5, 4))


# ------------------------------------------------------------------ independent float64 oracle
# tests/data/golden_tv_quilt.npz: tools/make_golden_tv_quilt.py, scalar numpy loops written from
# the op's definitions without importing obfgrad (mask, ghost ring, split-Bregman step, stopping).

GOLDEN_CASES = [(case, sweep, border) for case in ("stop", "fixed") for sweep in SWEEPS for border in BORDERS]


def test_mask_equals_the_independent_philox_draw(golden_tv_quilt):
    g = golden_tv_quilt
    x, seed, keep_prob = torch.from_numpy(g["tv_x"]), int(g["tv_params"][0]), float(g["tv_params"][1])
    expected = torch.from_numpy(g["tv_mask"])[:, None]
    assert torch.equal(tv_mask(x, keep_prob, seed=seed), expected)
    n, _, h, w = x.shape
    assert torch.equal(tv_module._mask_reference(n, h, w, keep_prob, seed), expected)


@pytest.mark.parametrize("case, sweep, border", GOLDEN_CASES)
def test_native_and_reference_equal_the_independent_iteration(golden_tv_quilt, case, sweep, border):
    # Masked TV (keep_prob 0.5): the same iterations exactly (the generator refuses a stopping test
    # within 2% of tol, so float32 cannot flip it), and the same values up to float32 rounding in
    # the native driver (measured <= 2.3e-6 after 60 iterations) and float64 rounding in the reference.
    g = golden_tv_quilt
    seed, keep_prob, lambda_tv = g["tv_params"].tolist()
    tol, max_iter = g[f"tv_{case}_tol_max_iter"].tolist()
    expected = torch.from_numpy(g[f"tv_{case}_{sweep}_{border}_out"])
    expected_iterations = torch.from_numpy(g[f"tv_{case}_{sweep}_{border}_iterations"])
    options = dict(tol=tol, max_iter=int(max_iter), seed=int(seed), sweep=sweep, border=border, return_iterations=True)
    x = torch.from_numpy(g["tv_x"])
    out, iterations = tv_minimize(x, keep_prob, lambda_tv, **options)
    assert torch.equal(iterations, expected_iterations)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    out, iterations = reference(x.double(), keep_prob, lambda_tv, **options)
    assert torch.equal(iterations, expected_iterations)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("border", BORDERS)
def test_converged_output_is_the_minimiser_of_the_tv_energy(golden_tv_quilt, border):
    # Every pixel kept: the golden image minimises the energy through its dual (L-BFGS-B), a
    # different algorithm from split Bregman. The energy is w-strongly convex (w = 2 / lambda_tv),
    # so the stored primal-dual gap bounds the golden's l2 distance to the true minimiser by
    # sqrt(2 gap / w) (~4e-5); both backends, run to convergence, must land within that bound plus
    # their rounding (measured: native 6.6e-7, reference 1.4e-8 after 1,000 iterations).
    g = golden_tv_quilt
    lambda_tv = float(g["tv_params"][2])
    bound = math.sqrt(2.0 * float(g[f"tv_converged_{border}_gap"].max()) / (2.0 / lambda_tv))
    assert bound < 1e-4  # the oracle itself converged
    x, expected = torch.from_numpy(g["tv_converged_x"]), torch.from_numpy(g[f"tv_converged_{border}_out"])
    for sweep in SWEEPS:
        native = tv_minimize(x, 1.0, lambda_tv, tol=0.0, max_iter=1000, seed=0, sweep=sweep, border=border)
        torch.testing.assert_close(native.double(), expected, atol=bound + 2e-6, rtol=0)
    converged = reference(x.double(), 1.0, lambda_tv, tol=0.0, max_iter=1000, sweep="red_black", border=border)
    torch.testing.assert_close(converged, expected, atol=bound + 1e-9, rtol=0)


# ------------------------------------------------------------------ seeds and mask


def test_same_seed_same_output_and_different_seeds_differ():
    x = _random_images((2, 3, 16, 16), seed=0)
    assert torch.equal(tv_minimize(x, seed=7), tv_minimize(x, seed=7))
    assert not torch.equal(tv_minimize(x, seed=7), tv_minimize(x, seed=8))
    assert not torch.equal(tv_mask(x, seed=7), tv_mask(x, seed=8))


def test_seed_none_follows_torch_generators():
    x = _random_images((1, 3, 16, 16), seed=0)
    torch.manual_seed(123)
    first = tv_minimize(x)
    torch.manual_seed(123)
    assert torch.equal(tv_minimize(x), first)
    a = tv_minimize(x, generator=torch.Generator().manual_seed(5))
    b = tv_minimize(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    # The drawn seed is the one tv_minimize used: replaying it gives the same output.
    seed = tv_module.draw_seed(torch.Generator().manual_seed(5))
    assert torch.equal(tv_minimize(x, seed=seed), a)


def test_native_mask_matches_pure_torch_philox():
    for seed in (0, 1, 2**40 + 3, 2**63 - 2):
        native_mask = tv_mask((3, 1, 17, 19), 0.37, seed=seed)
        assert torch.equal(native_mask, tv_module._mask_reference(3, 17, 19, 0.37, seed))


@pytest.mark.parametrize("keep_prob", [0.1, 0.5, 0.9])
def test_keep_rate_passes_a_binomial_test(keep_prob):
    stats = pytest.importorskip("scipy.stats")
    for seed in (1, 2, 3):
        mask = tv_mask((4, 3, 64, 64), keep_prob, seed=seed)
        kept, total = int(mask.sum()), mask.numel()
        assert stats.binomtest(kept, total, keep_prob).pvalue > 1e-4
    # Neighbouring pixels are independent: kept-kept pairs occur at rate p^2.
    mask = tv_mask((4, 3, 64, 64), keep_prob, seed=9)[:, 0].flatten(1)
    pairs = mask[:, :-1] & mask[:, 1:]
    assert stats.binomtest(int(pairs.sum()), pairs.numel(), keep_prob**2).pvalue > 1e-4


def test_keep_prob_one_keeps_every_pixel_and_is_plain_tv():
    x = _random_images((2, 3, 8, 8), seed=1)
    assert bool(tv_mask(x, 1.0, seed=3).all())
    assert torch.equal(tv_minimize(x, 1.0, seed=3), tv_minimize(x, 1.0, seed=4))


# ------------------------------------------------------------------ BPDA backward


def test_identity_backward_returns_grad_output_unchanged():
    x = _random_images((2, 3, 12, 12), seed=0).requires_grad_(True)
    grad_out = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    tv_minimize(x, seed=0).backward(grad_out)
    assert torch.equal(x.grad, grad_out)


def test_custom_op_passes_opcheck():
    x = _random_images((2, 3, 6, 5), seed=0)
    torch.library.opcheck(torch.ops.obfgrad.tv_minimize.default, (x, 0.5, WEIGHT, 1e-3, 20, 3, False))
    mask = tv_mask(x, 0.5, seed=1)[:, 0].to(torch.uint8)
    torch.library.opcheck(torch.ops.obfgrad.tv_minimize.default, (x, 0.5, WEIGHT, 1e-3, 20, 0, True, True, mask))


def test_module_draws_a_fresh_mask_per_call_unless_seeded():
    x = _random_images((1, 3, 16, 16), seed=0)
    # The op's one nn.Module is the defense's TVMinimization.
    from obfgrad.defenses import TVMinimization

    fresh = TVMinimization()
    assert not torch.equal(fresh(x), fresh(x))
    fixed = TVMinimization(seed=3)
    assert torch.equal(fixed(x), tv_minimize(x, seed=3))
    short = TVMinimization(seed=3, max_iter=2, tol=0.0)
    assert torch.equal(short(x), tv_minimize(x, seed=3, max_iter=2, tol=0.0))
    assert not torch.equal(short(x), fixed(x))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: tv_minimize(x[0], seed=0), ValueError, "x: expected a 4-D"),
        (lambda x: tv_minimize(x.int(), seed=0), TypeError, "x: expected a floating-point"),
        (lambda x: tv_minimize(x.index_fill(3, torch.tensor([1]), float("nan")), seed=0), ValueError, "NaN"),
        (lambda x: tv_minimize(x * 2, seed=0), ValueError, r"\[0, 1\]"),
        (lambda x: tv_minimize(x, 0.0, seed=0), ValueError, "keep_prob"),
        (lambda x: tv_minimize(x, 1.5, seed=0), ValueError, "keep_prob"),
        (lambda x: tv_minimize(x, -0.5, seed=0), ValueError, "keep_prob"),
        (lambda x: tv_minimize(x, 0.5, 0.0, seed=0), ValueError, "lambda_tv"),
        (lambda x: tv_minimize(x, 0.5, -0.03, seed=0), ValueError, "lambda_tv"),
        (lambda x: tv_minimize(x, max_iter=0, seed=0), ValueError, "max_iter"),
        (lambda x: tv_minimize(x, max_iter=2.5, seed=0), TypeError, "max_iter"),
        (lambda x: tv_minimize(x, tol=-1e-3, seed=0), ValueError, "tol"),
        (lambda x: tv_minimize(x, tol=float("nan"), seed=0), ValueError, "tol"),
        (lambda x: tv_minimize(x, seed=-1), ValueError, "seed"),
        (lambda x: tv_minimize(x, seed=2**63), ValueError, "seed"),
        (lambda x: tv_minimize(x, seed=1.0), TypeError, "seed"),
        (lambda x: tv_minimize(x, seed=1, generator=torch.Generator()), ValueError, "generator"),
        (lambda x: tv_minimize(x, seed=1, sweep="jacobi"), ValueError, "sweep"),
        (lambda x: tv_minimize(x, seed=1, border="wrap"), ValueError, "border"),
        (lambda x: tv_minimize(x, mask=torch.ones(2, 1, 8, 8)), TypeError, "mask: expected a bool"),
        (lambda x: tv_minimize(x, mask=torch.ones(2, 1, 8, 7, dtype=torch.bool)), ValueError, "mask: expected shape"),
        (lambda x: tv_minimize(x, mask=torch.ones(1, 8, 8, dtype=torch.bool)), ValueError, "mask: expected shape"),
        (lambda x: tv_minimize(x, seed=1, mask=torch.ones(2, 8, 8, dtype=torch.bool)), ValueError, "mask: give"),
        (lambda x: tv_mask((2, 8, 8), seed=1), ValueError, "shape"),
        (lambda x: tv_mask(x, 0.0, seed=1), ValueError, "keep_prob"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(_random_images((2, 3, 8, 8), seed=0))


def test_native_driver_rechecks_buffer_shapes():
    module = _native.native()
    if module is None:
        pytest.skip("the native extension is not built")
    x = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match="out"):
        module.tv_minimize(x, np.zeros((2, 3, 8, 7), np.float32), np.zeros(2, np.int32), 0.5, WEIGHT, 1e-3, 10, 0)
    with pytest.raises(ValueError, match="iterations"):
        module.tv_minimize(x, np.zeros_like(x), np.zeros(3, np.int32), 0.5, WEIGHT, 1e-3, 10, 0)
    with pytest.raises(ValueError, match="max_iter"):
        module.tv_minimize(x, np.zeros_like(x), np.zeros(2, np.int32), 0.5, WEIGHT, 1e-3, 0, 0)
    with pytest.raises(TypeError):  # a float64 output would be silently copied: refused instead
        module.tv_minimize(x, np.zeros((2, 3, 8, 8)), np.zeros(2, np.int32), 0.5, WEIGHT, 1e-3, 10, 0)
    with pytest.raises(ValueError, match="mask"):
        module.tv_minimize(x, np.zeros_like(x), np.zeros(2, np.int32), 0.5, WEIGHT, 1e-3, 10, 0, False, False,
                           np.ones((2, 8, 7), np.uint8))


# ------------------------------------------------------------------ CUDA


def test_cuda_driver_compiles_without_warnings(nvrtc):
    for arch in ("sm_80", "sm_90"):
        assert len(_native.compile_cuda_source("tv", arch)) > 0


@pytest.mark.gpu
@pytest.mark.parametrize("sweep", ["red_black", "raster"])
@pytest.mark.parametrize("border", ["skimage", "reflect"])
def test_cuda_matches_cpu_bit_for_bit(sweep, border):
    x = _random_images((3, 3, 33, 29), seed=6)
    cpu, cpu_iterations = tv_minimize(x, seed=4, sweep=sweep, border=border, return_iterations=True)
    gpu, gpu_iterations = tv_minimize(x.cuda(), seed=4, sweep=sweep, border=border, return_iterations=True)
    assert torch.equal(gpu_iterations.cpu(), cpu_iterations)
    assert torch.equal(gpu.cpu(), cpu)
    mask = tv_mask(x, 0.3, seed=9)  # a mask given from outside
    cpu = tv_minimize(x, mask=mask, sweep=sweep, border=border)
    assert torch.equal(tv_minimize(x.cuda(), mask=mask.cuda(), sweep=sweep, border=border).cpu(), cpu)


@pytest.mark.gpu
def test_cuda_mask_and_backward():
    x = _random_images((2, 3, 16, 16), seed=0).cuda()
    assert torch.equal(tv_mask(x, 0.5, seed=3).cpu(), tv_mask(x.cpu(), 0.5, seed=3))
    x.requires_grad_(True)
    grad_out = torch.randn_like(x)
    tv_minimize(x, seed=3).backward(grad_out)
    assert torch.equal(x.grad, grad_out)


# ------------------------------------------------------------------ CUDA driver, emulated on the CPU

@pytest.mark.parametrize("sweep", ["red_black", "raster"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 9, 7), (3, 1, 6, 11)])
def test_emulated_cuda_driver_matches_cpu_bit_for_bit(cuda_on_host, shape, sweep):
    # csrc/cuda/tv.cu compiled for the CPU (tests/cuda_host_shim.py), run by the op's own host
    # loop (_forward_cuda) with its packing and signature checks: the CPU driver's bits.
    x = _random_images(shape, seed=sum(shape))
    if shape[0] > 1:
        x[1] = 0.5  # a constant image stops after one iteration while the others go on
    cpu, cpu_iterations = tv_minimize(x, 0.5, tol=1e-3, max_iter=25, seed=13, sweep=sweep, return_iterations=True)
    weight = 2.0 / 0.03
    gpu, gpu_iterations = tv_module._forward_cuda(x, 0.5, weight, 1e-3, 25, 13, sweep == "raster")
    assert torch.equal(gpu_iterations, cpu_iterations)
    assert torch.equal(gpu, cpu)
    # Athalye et al.'s border with a mask given from outside (the paper profile's variant).
    mask = tv_mask(x, 0.4, seed=5)
    cpu, cpu_iterations = tv_minimize(x, mask=mask, tol=1e-3, max_iter=25, sweep=sweep, border="reflect",
                                      return_iterations=True)
    gpu, gpu_iterations = tv_module._forward_cuda(x, 0.5, weight, 1e-3, 25, 0, sweep == "raster", True,
                                                  mask[:, 0].to(torch.uint8).contiguous())
    assert torch.equal(gpu_iterations, cpu_iterations)
    assert torch.equal(gpu, cpu)


def test_emulated_cuda_mask_kernel_matches_cpu(cuda_on_host):
    mask = torch.zeros(2 * 7 * 9, dtype=torch.uint8)
    _native.launch_cuda("tv", "tv_mask_kernel", mask.numel(), (mask.numel(), mask, 0.3, 2**40 + 5),
                        device=mask.device)
    assert torch.equal(mask.view(2, 1, 7, 9).bool(), tv_mask((2, 3, 7, 9), 0.3, seed=2**40 + 5))
