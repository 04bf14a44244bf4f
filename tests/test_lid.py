"""LID: the MLE recovers the dimension of a linear manifold; features per layer; the detector."""

import numpy as np
import pytest
import torch

from obfgrad.defenses.lid import LIDDetector, layer_outputs, lid_features, lid_mle, roc_auc
from obfgrad.models import SmallCNN

pytest.importorskip("sklearn", reason="LIDDetector needs scikit-learn")


@pytest.mark.parametrize("dimension", [2, 5])
def test_lid_recovers_the_dimension_of_a_linear_subspace(dimension):
    generator = torch.Generator().manual_seed(dimension)
    basis = torch.linalg.qr(torch.randn(40, dimension, generator=generator)).Q.T  # d orthonormal rows in R^40
    points = torch.randn(2000, dimension, generator=generator) @ basis
    estimate = float(lid_mle(points, points, k=20).mean())
    assert abs(estimate - dimension) < 0.25 * dimension


def test_lid_matches_the_mle_formula_on_hand_made_distances():
    # Query at the origin; references at distances 0 (itself, skipped), 1, 2, 4 on a line.
    references = torch.tensor([[0.0], [1.0], [2.0], [4.0]])
    expected = -3 / (np.log(1 / 4) + np.log(2 / 4) + np.log(4 / 4))
    assert float(lid_mle(references[:1], references, k=3)) == pytest.approx(expected, rel=1e-6)


def test_lid_features_have_one_column_per_layer_and_rise_off_the_manifold():
    torch.manual_seed(0)
    net = SmallCNN(width=4, batch_norm=False).eval()
    clean = torch.rand(60, 1, 28, 28) * 0.2
    noisy = (clean + 0.6 * torch.rand_like(clean)).clamp(0, 1)
    features = lid_features(net, clean, [noisy], k=10, batch_size=30)
    layers = len(layer_outputs(net, clean[:2]))
    assert layers == 12  # input + 10 leaf layers + softmax
    assert features[0].shape == (60, layers) and features[1].shape == (60, layers)
    assert features[1][:, 0].mean() > features[0][:, 0].mean()  # input layer: noise leaves the clean set


def test_detector_separates_separable_toy_features():
    rng = np.random.default_rng(0)
    clean = rng.normal(0.0, 1.0, (200, 4))
    noisy = rng.normal(0.0, 1.0, (200, 4))
    adversarial = rng.normal(3.0, 1.0, (200, 4))
    detector = LIDDetector().fit(clean[:100], noisy[:100], adversarial[:100])
    auc = roc_auc(detector.score(clean[100:]), detector.score(adversarial[100:]))
    assert auc > 0.98
    assert detector.flag(adversarial[100:]).mean() > 0.9
    assert detector.flag(clean[100:]).mean() < 0.1


def test_roc_auc_is_the_mann_whitney_statistic():
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert roc_auc(np.array([0.1, 0.5]), np.array([0.3])) == 0.5


def test_detector_refuses_scoring_before_fit():
    with pytest.raises(RuntimeError, match="fit"):
        LIDDetector().score(np.zeros((1, 3)))
