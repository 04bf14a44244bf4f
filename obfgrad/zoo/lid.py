"""Ma et al. (2018), local intrinsic dimensionality: a detector over the classifier's layer
activations. The bundle holds the classifier; :func:`train_detector` trains its detector
(``obfgrad.defenses.LIDDetector``)."""

from __future__ import annotations

import time
from typing import Any, Dict, Tuple

import numpy as np
import torch

from obfgrad.attacks import CarliniWagnerL2
from obfgrad.defenses import LIDDetector, lid_features
from obfgrad.defenses.lid import roc_auc
from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext, DefenseBundle

DISTANCE = "linf"
PAPER_EPS = 8 / 255
SMOKE_EPS = 0.1


dataset = recipes.cifar10_or_fashion_mnist


def config(profile: str, dry_run: bool = False) -> Dict[str, Any]:
    """Every setting of the defense and of the paper's attacks on it (JSON)."""
    paper, eps, steps = recipes.profile_budget(profile, dry_run, PAPER_EPS, SMOKE_EPS)
    return {
        "eps": eps,
        **recipes.classifier_entries(lid_cnn_recipe() if paper else recipes.smoke_classifier(None)),
        "lid": {"k": 20, "batch_size": 100},
        "detector": {"classifier": "LogisticRegressionCV on min-max scaled features", "folds": 5, "threshold": 0.5,
                     "train_offset": 2 if dry_run else (1000 if paper else 5000),
                     # OBFGRAD_SMOKE_TRAIN_LIMIT (CI's quick run) caps the detector's examples too.
                     "train_examples": 2 if dry_run else (1000 if paper else recipes.train_limit(400)),
                     "noise": "gaussian, per-example l2 norm = the mean CW-L2 distortion, clipped to [0, 1]"},
        "detector_attack": {"name": "cw_l2", "steps": steps(1000 if paper else 100),
                            "binary_search_steps": 1 if dry_run else (9 if paper else 4),
                            "initial_const": 1e-3 if paper else 0.1, "lr": 0.01, "kappa": 0.0},
        "adaptive_attack": {"steps": steps(100), "step_size": eps / 8, "loss": "margin", "update": "adam_sign",
                            "random_start": False, "early_stop": False,
                            # Paper: lid/lid.ipynb starts its variable at zeros of the model's [-0.5, 0.5]
                            # scale, clipped into the ball: the ball's point nearest 0.5 on [0, 1].
                            "start_from": 0.5 if paper else None},
    }


def lid_cnn_recipe() -> Dict[str, Any]:
    """The paper profile's classifier: Ma et al.'s CIFAR-10 CNN, trained here."""
    # Ma et al.'s train_model.py settings are not in protocol.md: UNCONFIRMED (recorded in choices).
    return {"arch": "lid_cnn", "arch_kwargs": {}, "dataset": "cifar10", "train_limit": None, "epochs": 50,
            "batch_size": 128, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
            "lr_milestones": [], "lr_gamma": 0.1, "adversarial": None, "seed": 0}


def classifier(ctx: BuildContext, config: Dict[str, Any]):
    """The classifier the detector watches (the user's weights for ``lid`` if given)."""
    return common.classifier(ctx, config["classifier"], row="lid")


def build(config: Dict[str, Any], ctx: BuildContext, n: int) -> DefenseBundle:
    x, y = common.test_set(ctx, config["classifier"]["dataset"], n)
    model = classifier(ctx, config)
    return DefenseBundle(model=model, undefended=model, x=x, y=y, distance=DISTANCE, eps=config["eps"], name="lid",
                         config=config)


def cw(settings: Dict[str, Any]) -> CarliniWagnerL2:
    """The CW-L2 attack of a config entry (the detector's training attack and the own evaluation)."""
    return CarliniWagnerL2(steps=settings["steps"], lr=settings["lr"],
                           binary_search_steps=settings["binary_search_steps"],
                           initial_const=settings["initial_const"], kappa=settings["kappa"])


def noisy_like(x: torch.Tensor, x_adv: torch.Tensor, seed: int) -> torch.Tensor:
    """Gaussian noise scaled per example to the mean l2 norm of the adversarial perturbations."""
    norm = (x_adv - x).flatten(1).norm(dim=1).mean()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)).to(x.device)
    noise = noise * (norm / noise.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
    return (x + noise).clamp(0.0, 1.0)


def train_detector(ctx: BuildContext, config: Dict[str, Any], model) -> Tuple[LIDDetector, Dict[str, Any]]:
    """The LID detector of ``model``: trained on its own CW-L2 examples of the test images from
    ``config["detector"]["train_offset"]`` on (disjoint from the evaluated ones), Gaussian noise of
    the same mean norm as negatives. Returns it and what the row records about its training."""
    detector_config, lid_config = config["detector"], config["lid"]
    offset, count = detector_config["train_offset"], detector_config["train_examples"]
    x_all, y_all = common.test_set(ctx, config["classifier"]["dataset"], offset + count)
    x, y = x_all[offset:], y_all[offset:]
    started = time.perf_counter()
    x_adv = cw(config["detector_attack"])(model, x, y).x_adv
    noisy = noisy_like(x, x_adv, ctx.seed)
    clean_f, noisy_f, adv_f = lid_features(model, x, [noisy, x_adv], k=lid_config["k"],
                                           batch_size=lid_config["batch_size"])
    detector = LIDDetector(folds=detector_config["folds"], threshold=detector_config["threshold"],
                           seed=ctx.seed).fit(clean_f, noisy_f, adv_f)
    info = {"examples": int(x.shape[0]), "seconds": round(time.perf_counter() - started, 2),
            "train_roc_auc": roc_auc(detector.score(np.concatenate([clean_f, noisy_f])), detector.score(adv_f)),
            "features": int(clean_f.shape[1])}
    ctx.log(f"  LID detector trained on {info['examples']} CW-L2 examples ({info['seconds']:.0f} s), "
            f"train ROC-AUC {info['train_roc_auc']:.3f}")
    return detector, info
