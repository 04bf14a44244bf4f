"""The ImageNet classifier of Guo et al.'s and Xie et al.'s defenses in the paper profile:
InceptionV3 with the user's weights (or torchvision's), never trained here."""

from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from obfgrad.zoo import common, recipes
from obfgrad.zoo.base import BuildContext


def imagenet_classifier_recipe(dry_run: bool = False) -> Dict[str, Any]:
    """InceptionV3 (TF-slim input scaling); only its architecture matters: the weights are the
    user's (``--weights guo=FILE``) or torchvision's, never trained here. A dry run feeds the
    network at 75x75 (its smallest input; the defenses still run at 299x299) so that an untrained
    InceptionV3 on CPU stays fast."""
    kwargs = {"num_classes": 1000, "input_scaling": "tf", **({"image_size": 75} if dry_run else {})}
    return {"arch": "inception_v3", "arch_kwargs": kwargs,
            "dataset": "imagenet", "train_limit": None, "epochs": 0, "batch_size": 32, "optimizer": "sgd",
            "lr": 0.0, "adversarial": None, "seed": 0}


def imagenet_classifier(ctx: BuildContext, row: str) -> nn.Module:
    """The paper profile's InceptionV3, fed [0, 1] images: untrained in a dry run; else the user's
    weights file for ``row`` (torchvision's ``inception_v3`` state dict, or a TF-slim checkpoint
    converted to the same key names, 1001 logits), else torchvision's pretrained weights when
    torchvision is installed (optional extra). Both formats are fed ``2x - 1``
    (:func:`obfgrad.models.inception_v3.pretrained_inception`, which says why that is also
    torchvision's documented ``Normalize`` + ``transform_input=True`` pipeline)."""
    if ctx.dry_run:
        return common.classifier(ctx, imagenet_classifier_recipe(dry_run=True))
    from obfgrad.models.inception_v3 import pretrained_inception

    source = ctx.weights[row] if row in ctx.weights else torchvision_inception_state(row)
    return pretrained_inception(source).to(ctx.device).eval()


def torchvision_inception_state(row: str) -> Dict[str, torch.Tensor]:
    """torchvision's pretrained ``inception_v3`` weights (IMAGENET1K_V1) as a state dict."""
    try:
        import torchvision  # optional extra
    except ImportError:
        raise FileNotFoundError(
            f"row {row}: the paper profile needs InceptionV3 weights: pass --weights {row}=FILE (a state dict "
            "with torchvision's inception_v3 key names, or a TF-slim checkpoint converted to them) or install "
            "torchvision") from None
    return torchvision.models.inception_v3(weights="DEFAULT").state_dict()


def classifier(ctx: BuildContext, config: Dict[str, Any], row: str) -> nn.Module:
    """The classifier of ``config["classifier"]``: InceptionV3 (:func:`imagenet_classifier`) for
    ImageNet, else ``common.classifier`` (trained and cached; no user weights)."""
    if config["classifier"]["dataset"] == "imagenet":
        return imagenet_classifier(ctx, row)
    return common.classifier(ctx, config["classifier"])


def row_classifier(paper: bool, dry_run: bool) -> Dict[str, Any]:
    """The classifier entries of an ImageNet row's config: InceptionV3 (paper; targeted attacks) or
    the smoke CNN (untargeted), and the clean-accuracy floor of the recipe."""
    recipe = imagenet_classifier_recipe(dry_run) if paper else recipes.smoke_classifier(None)
    return {**recipes.classifier_entries(recipe), "targeted": paper}
