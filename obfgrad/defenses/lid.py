"""Local Intrinsic Dimensionality (LID) detector of adversarial examples (Ma et al., ICLR 2018),
as in the authors' code (xingjunm/lid_adversarial_subspace_detection: ``util.py:mle_batch``,
``get_lids_random_batch``, ``detect_adv_samples.py``) and protocol.md row 2.

For an example with activations ``a`` at one layer, with ``r_1 <= ... <= r_k`` the Euclidean
distances to its ``k`` nearest neighbours among a minibatch of clean examples, the maximum-
likelihood estimate is

.. math::  \\mathrm{LID}(a) = -\\Big(\\frac{1}{k}\\sum_{i=1}^{k} \\log \\frac{r_i}{r_k}\\Big)^{-1}.

One LID per layer (the input, every layer's output, the softmax) gives an example's feature
vector; ``k = 20`` within minibatches of 100. A logistic regression (``LogisticRegressionCV``
on min-max scaled features) separates adversarial examples (positives) from clean and noisy
ones (negatives).

The authors' ``mle_batch`` sorts the distances and drops the nearest (``[:, 1:k+1]``), for the
clean examples (whose nearest is themselves, at 0) *and* for the noisy/adversarial ones; we do
the same (``skip_nearest=True``).

scikit-learn is needed for :class:`LIDDetector` only (an optional dependency).
"""

from __future__ import annotations

import warnings
from typing import List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from obfgrad._checks import check_int

__all__ = ["lid_mle", "layer_outputs", "lid_features", "LIDDetector", "roc_auc"]


def lid_mle(queries: torch.Tensor, references: torch.Tensor, k: int = 20, skip_nearest: bool = True) -> torch.Tensor:
    """LID estimate of each row of ``queries`` ``(M, D)`` among ``references`` ``(R, D)``.

    Uses the ``k`` nearest references (after dropping the nearest one when ``skip_nearest``);
    ``k`` is capped at what the references allow, as the authors' ``min(k, len(data) - 1)``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> line = torch.randn(500, 1, generator=g) @ torch.randn(1, 10, generator=g)
        >>> round(float(lid_mle(line, line, k=20).mean()))  # points on a line: dimension 1
        1
    """
    check_int(k, "k", low=1)
    if queries.dim() != 2 or references.dim() != 2 or queries.shape[1] != references.shape[1]:
        raise ValueError(f"queries, references: expected (M, D) and (R, D), got {tuple(queries.shape)} "
                         f"and {tuple(references.shape)}")
    skip = 1 if skip_nearest else 0
    k = min(k, references.shape[0] - skip)
    if k < 1:
        raise ValueError(f"references: need at least {1 + skip} rows, got {references.shape[0]}")
    distances = torch.cdist(queries.double(), references.double())
    nearest = distances.topk(k + skip, dim=1, largest=False).values[:, skip:]
    # A zero distance (a duplicate) would make log(r_i / r_k) = -inf: keep it finite.
    nearest = nearest.clamp_min(1e-12)
    log_ratio = torch.log(nearest / nearest[:, -1:]).sum(dim=1)
    return (-k / log_ratio.clamp_max(-1e-12)).float()


def layer_outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The feature sets LID is computed on: ``model.layer_outputs(x)`` when the model has it
    (e.g. :class:`obfgrad.models.LidCNN`: input, 24 layers, softmax); otherwise the input, the
    output of every leaf module in call order, and the softmax of the logits."""
    own = getattr(model, "layer_outputs", None)
    if callable(own):
        return own(x)
    outputs: List[torch.Tensor] = [x]
    hooks = [module.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for module in model.modules() if not list(module.children())]
    try:
        logits = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    outputs.append(torch.softmax(logits, dim=1))
    return outputs


@torch.no_grad()
def lid_features(model: nn.Module, clean: torch.Tensor, others: Sequence[torch.Tensor], k: int = 20,
                 batch_size: int = 100) -> List[np.ndarray]:
    """LID features ``(N, layers)`` of ``clean`` and of each batch in ``others`` (same N, same
    order: row i of each is a version of clean example i).

    Minibatch by minibatch of ``batch_size`` examples, every set is measured against the clean
    activations of that minibatch (``get_lids_random_batch``).
    """
    check_int(batch_size, "batch_size", low=2)
    n = clean.shape[0]
    for other in others:
        if other.shape != clean.shape:
            raise ValueError(f"others: expected batches shaped like clean {tuple(clean.shape)}, "
                             f"got {tuple(other.shape)}")
    was_training = model.training
    model.eval()
    try:
        chunks: List[List[np.ndarray]] = [[] for _ in range(1 + len(others))]
        for start in range(0, n, batch_size):
            clean_layers = [a.flatten(1) for a in layer_outputs(model, clean[start:start + batch_size])]
            for index, batch in enumerate([clean, *others]):
                layers = clean_layers if index == 0 else [a.flatten(1) for a in
                                                          layer_outputs(model, batch[start:start + batch_size])]
                lids = [lid_mle(q, ref, k) for q, ref in zip(layers, clean_layers)]
                chunks[index].append(torch.stack(lids, dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    return [np.concatenate(parts) for parts in chunks]


def roc_auc(scores_negative: np.ndarray, scores_positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties 1/2
    (the Mann-Whitney statistic)."""
    negative, positive = np.asarray(scores_negative, float), np.asarray(scores_positive, float)
    if negative.size == 0 or positive.size == 0:
        raise ValueError("scores: need at least one negative and one positive")
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (negative.size * positive.size))


def _logistic_regression_cv(folds: int, seed: int):
    try:
        from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    except ImportError as error:  # optional dependency
        raise ImportError("LIDDetector needs scikit-learn (pip install scikit-learn)") from error
    if folds < 2:
        return LogisticRegression(max_iter=1000)
    # scoring="accuracy": the authors' (and scikit-learn's historical) default.
    return LogisticRegressionCV(cv=folds, max_iter=1000, random_state=seed, scoring="accuracy")


class LIDDetector:
    """Min-max scaling + logistic regression on LID features (adversarial = positive).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> clean, adv = rng.normal(0, 1, (50, 3)), rng.normal(4, 1, (50, 3))
        >>> detector = LIDDetector().fit(clean, clean + 0.01, adv)
        >>> float(detector.flag(adv).mean()) > 0.9, float(detector.flag(clean).mean()) < 0.1
        (True, True)
    """

    def __init__(self, folds: int = 5, threshold: float = 0.5, seed: int = 0):
        self.folds = check_int(folds, "folds", low=1)
        self.threshold = float(threshold)
        self.seed = seed
        self._low: Optional[np.ndarray] = None
        self._range: Optional[np.ndarray] = None
        self._model = None

    def _scale(self, features: np.ndarray) -> np.ndarray:
        if self._low is None:
            raise RuntimeError("LIDDetector: call fit() first")
        return (np.asarray(features, float) - self._low) / self._range

    def fit(self, clean: np.ndarray, noisy: np.ndarray, adversarial: np.ndarray) -> LIDDetector:
        negatives = np.concatenate([clean, noisy])
        features = np.concatenate([negatives, adversarial]).astype(float)
        labels = np.concatenate([np.zeros(len(negatives)), np.ones(len(adversarial))])
        self._low = features.min(axis=0)
        spread = features.max(axis=0) - self._low
        self._range = np.where(spread > 0, spread, 1.0)  # a constant feature scales to 0
        folds = min(self.folds, len(adversarial), len(negatives))
        self._model = _logistic_regression_cv(folds, self.seed)
        with warnings.catch_warnings():  # scikit-learn 1.8 announces default changes we pin above
            warnings.simplefilter("ignore", FutureWarning)
            self._model.fit(self._scale(features), labels)
        return self

    def score(self, features: np.ndarray) -> np.ndarray:
        """Probability that each example is adversarial."""
        scaled = self._scale(features)  # raises before fit()
        return self._model.predict_proba(scaled)[:, 1]

    def flag(self, features: np.ndarray) -> np.ndarray:
        """Boolean: the detector calls the example adversarial."""
        return self.score(features) >= self.threshold


