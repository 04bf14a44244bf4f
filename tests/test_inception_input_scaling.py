"""The ImageNet classifier of the Guo and Xie rows (paper profile) sees its input on the scale its
weights were trained for, for both weight formats the rows accept (issue 14, item 1).

The oracle is torchvision's documented pipeline, written out here (torchvision may not import
beside this torch): ``Inception_V3_Weights.IMAGENET1K_V1.transforms`` ends in
``Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))``, and ``inception_v3(weights=...)``
builds the model with ``transform_input=True``, whose ``Inception3._transform_input`` maps channel c
of its input by ``z * std_c / 0.5 + (mean_c - 0.5) / 0.5`` before the first convolution
(torchvision/models/inception.py). TF-slim's InceptionV3 is fed ``2x - 1`` and has 1001 logits
(class 0: background). Weights are random (no download), with batch-norm statistics calibrated
on the inputs so that the logits are of order 1 and a wrong scale shows."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.models.inception_v3 import InceptionV3, pretrained_inception  # noqa: E402
from obfgrad.zoo import imagenet  # noqa: E402
from reproduce.spec import RunContext  # noqa: E402

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize(x):
    """torchvision.transforms.Normalize(MEAN, STD) on a batch."""
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def transform_input(z):
    """torchvision's Inception3._transform_input (transform_input=True), channel by channel."""
    return torch.cat([z[:, c:c + 1] * (STD[c] / 0.5) + (MEAN[c] - 0.5) / 0.5 for c in range(3)], dim=1)


def network_on(state, scaled):
    """The InceptionV3 layers with ``state``'s weights applied to an input already on the network's
    scale (a ``"tf"`` model computes ``2u - 1`` first, so it is fed ``(scaled + 1) / 2``)."""
    core = InceptionV3(num_classes=state["fc.weight"].shape[0], input_scaling="tf").eval()
    core.load_state_dict(state)
    with torch.no_grad():
        return core((scaled + 1) / 2)


def random_state(classes, images):
    """Random InceptionV3 weights in torchvision's key names (plus an AuxLogits entry, as a
    torchvision state dict has), batch-norm statistics measured on ``images`` on the [-1, 1] scale."""
    torch.manual_seed(classes)
    model = InceptionV3(num_classes=classes, input_scaling="tf")
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the batch's
    model.train()
    with torch.no_grad():
        model(images)
    state = model.state_dict()
    state["AuxLogits.fc.weight"] = torch.zeros(classes, 768)
    return state


@pytest.fixture(scope="module")
def images():
    return torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0))  # one: InceptionV3 on CPU


def _ctx(weights=None):
    return RunContext(profile="paper", weights=weights or {}, progress=False, log=lambda message: None)


def _assert_same_logits(ours, reference):
    assert ours.shape == reference.shape
    assert reference.abs().max() > 0.5  # logits of order 1: a scaling error would show
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def test_a_torchvision_state_dict_is_fed_as_torchvisions_documented_pipeline(tmp_path, images):
    state = random_state(1000, images)
    path = tmp_path / "inception_v3_torchvision.pt"
    torch.save(state, path)
    model = imagenet.imagenet_classifier(_ctx({"guo": path}), "guo")
    with torch.no_grad():
        ours = model(images)
    _assert_same_logits(ours, network_on(_without_aux(state), transform_input(normalize(images))))


def test_a_tf_slim_checkpoint_with_1001_logits_is_fed_minus_one_to_one_and_drops_the_background(tmp_path, images):
    state = _without_aux(random_state(1001, images))
    path = tmp_path / "inception_v3_tfslim.pt"
    torch.save({"state_dict": state}, path)
    model = imagenet.imagenet_classifier(_ctx({"guo": path}), "guo")
    with torch.no_grad():
        ours = model(images)
    _assert_same_logits(ours, network_on(state, 2 * images - 1)[:, 1:])


def test_torchvisions_own_weights_without_a_file_take_the_same_pipeline(monkeypatch, images):
    state = random_state(1000, images)
    monkeypatch.setattr(imagenet, "torchvision_inception_state", lambda row: state)
    with torch.no_grad():
        ours = imagenet.imagenet_classifier(_ctx(), "guo")(images)
    _assert_same_logits(ours, network_on(_without_aux(state), transform_input(normalize(images))))


def test_against_torchvision_itself_when_it_imports(images):
    try:
        from torchvision.models import inception_v3
    except Exception as error:  # not installed, or built for another torch
        pytest.skip(f"torchvision does not import here ({type(error).__name__}); the pipeline is stated above")
    reference = inception_v3(weights=None, aux_logits=True, transform_input=True, init_weights=False).eval()
    state = random_state(1000, images)
    state["AuxLogits.fc.weight"] = reference.state_dict()["AuxLogits.fc.weight"]
    reference.load_state_dict({**reference.state_dict(), **state})
    with torch.no_grad():
        expected = reference(normalize(images))
        ours = pretrained_inception(state).eval()(images)
    _assert_same_logits(ours, expected)


def test_the_xie_row_loads_its_classifier_the_same_way(monkeypatch):
    from reproduce.rows import all_specs

    calls = []
    monkeypatch.setattr(imagenet, "imagenet_classifier", lambda ctx, row: calls.append(row) or "model")
    (xie,) = all_specs(["xie"], "paper")
    assert imagenet.classifier(_ctx(), xie.config, xie.name) == "model" and calls == ["xie"]


def test_the_ambiguous_torchvision_scaling_name_is_refused():
    with pytest.raises(ValueError, match="transform_input"):
        InceptionV3(input_scaling="torchvision")


def _without_aux(state):
    return {key: value for key, value in state.items() if not key.startswith("AuxLogits.")}
