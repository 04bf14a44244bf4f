"""Bad input to the public API gets a clear error naming the argument, never a crash or a silent
wrong answer (issue 15): one table per entry point -- the ops, the attacks, ``evaluate``,
``diagnose`` -- plus the cases of the issue: NaN/Inf model outputs (case 2), empty batches and
the other unclear errors (case 13)."""

import numpy as np
import pytest
import torch
from torch import nn

from obfgrad.attacks import (
    BPDA,
    EOT,
    LSPGA,
    PGD,
    CarliniWagnerL2,
    LatentAttack,
    PenalizedGradientDescent,
    TransferAttack,
)
from obfgrad.attacks.inputs import NonFiniteOutputError
from obfgrad.attacks.losses import NoGradientError
from obfgrad.defenses import (
    ImageQuilting,
    RandomResizePad,
    ThermometerDefense,
    TransformedClassifier,
    TVMinimization,
)
from obfgrad.distances import get_distance
from obfgrad.eval import DiagnoseBudget, diagnose, evaluate
from obfgrad.ops.jpeg_op import jpeg, linear_surrogate, quantization_tables
from obfgrad.ops.jpeg_op import reference as jpeg_reference
from obfgrad.ops.quilt_op import knn_reference, quilt
from obfgrad.ops.thermometer_op import (
    soft_thermometer_reference,
    thermometer,
    thermometer_reference,
)
from obfgrad.ops.tv_op import reference as tv_reference
from obfgrad.ops.tv_op import tv_mask, tv_minimize


def images(n=4, c=1, h=4, w=4, seed=0):
    return torch.rand((n, c, h, w), generator=torch.Generator().manual_seed(seed))


def linear(c=1, h=4, w=4, classes=3):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes))


LABELS = torch.tensor([0, 1, 2, 0])
DB = torch.rand(40, 3, 5, 5, generator=torch.Generator().manual_seed(3))
RGB = images(c=3, h=8, w=8)


def _nan_images():
    x = images()
    x[1, 0, 2, 2] = float("nan")
    return x


# ------------------------------------------------------------------------ the ops

OP_CASES = [
    ("thermometer list", lambda: thermometer([[[[0.5]]]]), TypeError, "x: expected a torch.Tensor"),
    ("thermometer rank", lambda: thermometer(torch.rand(4, 4)), ValueError,
     r"x: expected a 4-D NCHW batch, got shape \(4, 4\)"),
    ("thermometer int", lambda: thermometer(torch.zeros(1, 1, 2, 2, dtype=torch.long)), TypeError,
     "x: expected a floating"),
    ("thermometer nan", lambda: thermometer(_nan_images()), ValueError, "x: contains NaN"),
    ("thermometer 0-255", lambda: thermometer(images() * 255), ValueError, r"x: expected values in \[0, 1\]"),
    ("thermometer levels", lambda: thermometer(images(), levels=1), ValueError, "levels: expected an int >= 2"),
    ("thermometer levels type", lambda: thermometer(images(), levels=16.0), TypeError, "levels: expected an int"),
    ("thermometer backward", lambda: thermometer(images(), backward="exact"), ValueError, "backward: expected one of"),
    ("jpeg numpy", lambda: jpeg(np.zeros((1, 3, 8, 8), np.float32)), TypeError, "x: expected a torch.Tensor"),
    ("jpeg rank 2", lambda: jpeg(torch.rand(8, 8)), ValueError, r"x: expected a 4-D NCHW batch, got shape \(8, 8\)"),
    ("jpeg rank 3", lambda: jpeg(torch.rand(3, 8, 8)), ValueError, r"got shape \(3, 8, 8\)"),
    ("jpeg channels", lambda: jpeg(torch.rand(1, 2, 8, 8)), ValueError, "x: expected 1 or 3 channels, got 2"),
    ("jpeg inf", lambda: jpeg(torch.full((1, 3, 8, 8), float("inf"))), ValueError, "x: contains NaN or Inf"),
    ("jpeg quality", lambda: jpeg(RGB, quality=0), ValueError, "quality: expected an int >= 1"),
    ("jpeg subsampling", lambda: jpeg(RGB, subsampling="4:2:2"), ValueError, "subsampling: expected one of"),
    ("tv numpy", lambda: tv_minimize(np.zeros((1, 3, 8, 8), np.float32)), TypeError, "x: expected a torch.Tensor"),
    ("tv list", lambda: tv_minimize([[[[0.5]]]]), TypeError, "x: expected a torch.Tensor"),
    ("tv module numpy", lambda: TVMinimization()(np.zeros((1, 3, 8, 8), np.float32)), TypeError,
     "x: expected a torch.Tensor"),
    ("tv keep_prob", lambda: tv_minimize(RGB, keep_prob=0.0), ValueError, "keep_prob: expected a number > 0"),
    ("tv keep_prob nan", lambda: tv_minimize(RGB, keep_prob=float("nan")), ValueError, "keep_prob: expected a finite"),
    ("tv lambda", lambda: tv_minimize(RGB, lambda_tv=-1.0), ValueError, "lambda_tv: expected a number > 0"),
    ("tv max_iter", lambda: tv_minimize(RGB, max_iter=0), ValueError, "max_iter: expected an int >= 1"),
    ("tv seed", lambda: tv_minimize(RGB, seed=-1), ValueError, "seed: expected an int >= 0"),
    ("tv seed and generator", lambda: tv_minimize(RGB, seed=1, generator=torch.Generator()), ValueError,
     "generator: give either seed or generator"),
    ("tv generator type", lambda: tv_minimize(RGB, generator=5), TypeError, "generator: expected a torch.Generator"),
    ("tv sweep", lambda: tv_minimize(RGB, sweep="spiral"), ValueError, "sweep: expected one of"),
    ("tv_mask text shape", lambda: tv_mask("abcd", seed=1), ValueError, "shape: expected"),
    ("tv_mask fractional shape", lambda: tv_mask((1, 3, 4.5, 4), seed=1), ValueError, "shape: expected"),
    ("quilt numpy", lambda: quilt(np.zeros((1, 3, 8, 8), np.float32), DB), TypeError, "x: expected a torch.Tensor"),
    ("quilt list", lambda: quilt([[[[0.5]]]], DB), TypeError, "x: expected a torch.Tensor"),
    ("quilt float64", lambda: quilt(RGB.double(), DB), TypeError, "x: expected float32"),
    ("quilt channels", lambda: quilt(images(c=1, h=8, w=8), DB), ValueError, "database: has 3-channel patches"),
    ("quilt database type", lambda: quilt(RGB, [1, 2, 3]), TypeError, "database: expected a PatchDatabase"),
    ("quilt database 0-255", lambda: quilt(RGB, DB * 255), ValueError,
     r"database: expected finite patches in \[0, 1\]"),
    ("quilt database nan", lambda: quilt(RGB, DB.masked_fill(DB > 0.99, float("nan"))), ValueError, "NaN or Inf"),
    ("quilt 1x1 patches", lambda: quilt(RGB, torch.rand(20, 3, 1, 1)), ValueError, "1x1 patches are too small"),
    ("quilt k", lambda: quilt(RGB, DB, k=41), ValueError, "k: expected an int <= 40"),
    ("quilt overlap", lambda: quilt(RGB, DB, overlap=5), ValueError, "overlap: expected an int <= 4"),
    ("quilt seed and generator", lambda: quilt(RGB, DB, seed=1, generator=torch.Generator()), ValueError,
     "generator: give either seed or generator"),
    ("quilt generator type", lambda: quilt(RGB, DB, generator="0"), TypeError, "generator: expected a torch.Generator"),
    ("registered op float64", lambda: torch.ops.obfgrad.jpeg_roundtrip(RGB.double(), 75, True, 0), TypeError,
     "x: the registered op takes float32"),
    ("registered op mode", lambda: torch.ops.obfgrad.thermometer_encode(RGB, 16, 7), ValueError,
     "mode: expected one of"),
    ("registered op quality", lambda: torch.ops.obfgrad.jpeg_roundtrip(RGB, 0, True, 0), ValueError,
     "quality: expected"),
    # The references and helpers are public too: an unknown choice once ran as the default,
    # quality 0 or lambda_tv 0 divided by zero, a shorter query matched a prefix.
    ("jpeg reference subsampling", lambda: jpeg_reference(RGB, subsampling="4:1:1"), ValueError,
     "subsampling: expected one of"),
    ("jpeg reference quality", lambda: jpeg_reference(RGB, 0), ValueError, "quality: expected an int >= 1"),
    ("jpeg reference numpy", lambda: jpeg_reference(RGB.numpy()), TypeError, "x: expected a torch.Tensor"),
    ("quantization tables quality", lambda: quantization_tables(0), ValueError, "quality: expected an int >= 1"),
    ("linear surrogate subsampling", lambda: linear_surrogate(RGB, subsampling="4:2:2"), ValueError,
     "subsampling: expected one of"),
    ("thermometer reference levels", lambda: thermometer_reference(RGB, levels=1), ValueError,
     "levels: expected an int >= 2"),
    ("soft thermometer scale", lambda: soft_thermometer_reference(RGB, 4, scale="0-255"), ValueError,
     "scale: expected one of 'unit', '255'"),
    ("tv reference sweep", lambda: tv_reference(RGB, sweep="spiral"), ValueError, "sweep: expected one of"),
    ("tv reference border", lambda: tv_reference(RGB, border="wrap"), ValueError, "border: expected one of"),
    ("tv reference lambda", lambda: tv_reference(RGB, 0.5, 0.0), ValueError, "lambda_tv: expected a number > 0"),
    ("tv reference max_iter", lambda: tv_reference(RGB, max_iter=0), ValueError, "max_iter: expected an int >= 1"),
    ("tv reference mask", lambda: tv_reference(RGB, mask=torch.ones(3, 3, dtype=torch.bool)), ValueError,
     r"mask: expected a \(4, 1, 8, 8\) bool tensor"),
    ("tv max_iter beyond int32", lambda: tv_minimize(RGB, seed=0, max_iter=2**40), ValueError,
     "max_iter: expected an int <= 2147483647"),
    ("tv_mask device", lambda: tv_mask((1, 1, 4, 4), seed=1, device="tpu"), ValueError, "device: not a torch device"),
    ("knn reference dims", lambda: knn_reference(torch.rand(3, 74), DB.reshape(40, -1), 3), ValueError,
     r"queries, database: expected \(Q, D\) and \(N, D\)"),
    ("knn reference k", lambda: knn_reference(torch.rand(3, 75), DB.reshape(40, -1), 41), ValueError,
     "k: expected an int <= 40"),
    ("registered tv mask dtype", lambda: _tv_op_with_mask(torch.ones(4, 8, 8)), TypeError,
     "mask: the registered op takes a uint8 or bool"),
    ("registered tv mask shape", lambda: _tv_op_with_mask(torch.ones(4, 8, 7, dtype=torch.bool)), ValueError,
     r"mask: expected shape \(4, 8, 8\)"),
    ("registered quilt choices int32", lambda: _quilt_op_with(choices=torch.zeros(4, 4, 1, dtype=torch.int32)),
     TypeError, "choices: the registered op takes int64"),
    ("registered quilt choices shape", lambda: _quilt_op_with(choices=torch.zeros(4, 4, dtype=torch.long)),
     ValueError, r"choices: expected shape \(4, 4, K >= 1\)"),
    ("registered quilt choices range", lambda: _quilt_op_with(choices=torch.full((4, 4, 1), 40)), ValueError,
     r"choices: expected database rows in \[0, 40\)"),
    ("registered quilt choices negative", lambda: _quilt_op_with(choices=torch.full((4, 4, 1), -1)), ValueError,
     r"choices: expected database rows in \[0, 40\)"),
    ("registered quilt nan database", lambda: _quilt_op_with(database_nan=True), ValueError,
     "database: the search found no neighbour for some patches: the database or its squared norms hold NaN"),
    ("registered quilt float64 database", lambda: _quilt_op_with(database_dtype=torch.float64), ValueError,
     "database: expected float32"),
]


def _tv_op_with_mask(mask):
    return torch.ops.obfgrad.tv_minimize(images(h=8, w=8), 0.5, 66.7, 1e-3, 5, 0, False, False, mask)


def _quilt_op_with(choices=None, database_nan=False, database_dtype=torch.float32):
    from obfgrad.data.patch_db import search_projections
    from obfgrad.ops.quilt_op import _quilt_op

    flat = DB.reshape(40, -1).clone()
    proj = torch.from_numpy(search_projections(flat.numpy(), 3))
    if database_nan:
        flat[:] = float("nan")
    return _quilt_op(RGB, flat.to(database_dtype), (flat * flat).sum(1), proj, 5, 3, 2, 0, 0, choices)


@pytest.mark.parametrize("name,call,error,match", OP_CASES, ids=[case[0] for case in OP_CASES])
def test_ops_reject_bad_input_naming_the_argument(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


DEFENSE_CASES = [
    ("resize-pad sizes", lambda: RandomResizePad(10, 8), ValueError, "sizes: expected min_size < max_size <= padded"),
    ("resize-pad padded", lambda: RandomResizePad(8, 10, 9), ValueError, "sizes: expected"),
    ("quilting k above the database", lambda: ImageQuilting(torch.rand(5, 3, 5, 5), k=10), ValueError,
     "k: expected an int <= 5"),
    ("quilting overlap", lambda: ImageQuilting(DB, overlap=5), ValueError, "overlap: expected an int <= 4"),
    ("quilting database type", lambda: ImageQuilting("db.npy"), TypeError, "database: expected a PatchDatabase"),
    ("quilting authors overlap 1", lambda: ImageQuilting(DB, overlap=1, stitch="authors"), ValueError,
     "overlap: expected an int >= 2"),
    ("quilting database 0-255", lambda: ImageQuilting(DB * 255), ValueError,
     r"database: expected finite patches in \[0, 1\]"),
    ("quilting database nan", lambda: ImageQuilting(DB.masked_fill(DB > 0.99, float("nan"))), ValueError, "NaN or Inf"),
    ("quilting database float64", lambda: ImageQuilting(DB.double()), TypeError, "database: expected float32"),
    ("quilting database not square", lambda: ImageQuilting(DB[:, :, :, :4]), ValueError,
     r"database: expected a non-empty \(N, C, P, P\) tensor"),
    ("quilting 1x1 patches", lambda: ImageQuilting(torch.rand(20, 3, 1, 1)), ValueError, "1x1 patches are too small"),
    ("transformed classifier transform", lambda: TransformedClassifier(3, linear()), TypeError,
     "transform: expected a callable"),
    ("transformed classifier classifier", lambda: TransformedClassifier(RandomResizePad(), "net"), TypeError,
     "classifier: expected a callable"),
    ("thermometer classifier", lambda: ThermometerDefense(None), TypeError, "classifier: expected a model"),
    ("transform generator", lambda: TVMinimization(generator=1), TypeError, "generator: expected a torch.Generator"),
    ("eps tensor nan", lambda: get_distance("linf").project(RGB[:2], RGB[:2], torch.tensor([float("nan"), 0.1])),
     ValueError, "eps: expected finite budgets >= 0"),
    ("eps tensor negative", lambda: get_distance("l2").project(RGB[:2], RGB[:2], torch.tensor([-0.1, 0.1])),
     ValueError, "eps: expected finite budgets >= 0"),
]


@pytest.mark.parametrize("name,call,error,match", DEFENSE_CASES, ids=[case[0] for case in DEFENSE_CASES])
def test_defenses_and_distances_reject_bad_settings_when_built(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------ the attacks

ATTACK_CASES = [
    ("PGD eps", lambda: PGD("linf", 0), ValueError, "eps: expected a number > 0"),
    ("PGD eps nan", lambda: PGD("linf", float("nan")), ValueError, "eps: expected a finite number"),
    ("PGD steps", lambda: PGD("linf", 0.1, steps=-1), ValueError, "steps: expected an int >= 0"),
    ("PGD distance", lambda: PGD(eps=0.1, distance="l3"), ValueError, "distance: expected one of"),
    ("PGD update", lambda: PGD("linf", 0.1, update="momentum"), ValueError, "update: expected one of"),
    ("PGD loss", lambda: PGD("linf", 0.1, loss="hinge"), ValueError, "loss: expected one of"),
    ("PGD x numpy", lambda: PGD("linf", 0.1, steps=1)(linear(), np.zeros((4, 1, 4, 4), np.float32), LABELS), TypeError,
     "x: expected a torch.Tensor"),
    ("PGD x range", lambda: PGD("linf", 0.1, steps=1)(linear(), images() * 255, LABELS), ValueError,
     r"x: expected values in \[0, 1\]"),
    ("PGD y float", lambda: PGD("linf", 0.1, steps=1)(linear(), images(), LABELS.float()), TypeError,
     "y: expected an integer"),
    ("PGD y shape", lambda: PGD("linf", 0.1, steps=1)(linear(), images(), LABELS[:3]), ValueError,
     r"y: expected shape \(4,\)"),
    ("PGD y negative", lambda: PGD("linf", 0.1, steps=1)(linear(), images(), -LABELS - 1), ValueError,
     "y: expected class indices >= 0"),
    ("PGD y too large", lambda: PGD("linf", 0.1, steps=1)(linear(), images(), LABELS + 5), ValueError,
     "y: class index 7 out of range for a model with 3 logits"),
    ("PGD target missing", lambda: PGD("linf", 0.1, steps=1, targeted=True)(linear(), images(), LABELS), ValueError,
     "target: required"),
    ("PGD model output", lambda: PGD("linf", 0.1, steps=1)(lambda v: v, images(), LABELS), ValueError,
     r"model: expected logits of shape \(4, K\)"),
    ("CW distance", lambda: CarliniWagnerL2(distance="linf"), ValueError, "distance: expected an l2 distance"),
    ("CW lr", lambda: CarliniWagnerL2(lr=0), ValueError, "lr: expected a number > 0"),
    ("CW y shape", lambda: CarliniWagnerL2(steps=1)(linear(), images(), LABELS[:2]), ValueError, "y: expected shape"),
    ("Penalized penalty", lambda: PenalizedGradientDescent("l2", 0.1, penalty=-1), ValueError,
     "penalty: expected a number >= 0"),
    ("LSPGA model", lambda: LSPGA(eps=0.1)(linear(), images(), LABELS), TypeError,
     "model: LSPGA needs a thermometer model"),
    ("LSPGA targeted", lambda: LSPGA(eps=0.1)(linear(), images(), LABELS, LABELS), ValueError,
     "target: LSPGA is untargeted"),
    ("Latent generator", lambda: LatentAttack(linear()), TypeError, "generator: expected a generator module"),
    ("Latent seed", lambda: LatentAttack(_generator(), seed=-3), ValueError, "seed: expected an int >= 0"),
    ("Transfer attack", lambda: TransferAttack(None, linear()), TypeError, "attack: expected an attack"),
    ("Transfer surrogate", lambda: TransferAttack(PGD("linf", 0.1), "net"), TypeError, "surrogate: expected a model"),
    ("EOT model", lambda: EOT(3), TypeError, "model: expected a callable"),
    ("EOT samples", lambda: EOT(linear(), samples=0), ValueError, "samples: expected an int >= 1"),
    ("EOT reduction", lambda: EOT(linear(), reduction="median"), ValueError, "reduction: expected one of"),
    ("BPDA forward_fn", lambda: BPDA("round"), TypeError, "forward_fn: expected a callable"),
    ("BPDA shape", lambda: BPDA(lambda v: v[:, :, :2])(images().requires_grad_()), ValueError,
     "forward_fn: the identity approximation needs an output of the input's shape"),
    ("no gradient path", lambda: PGD("linf", 0.1, steps=2)(lambda v: linear()(v.detach()), images(), LABELS),
     NoGradientError, "model: no gradient reaches x"),
]


def _generator():
    from obfgrad.models.wgan import Generator

    return Generator("mlp", dim=8).eval()


@pytest.mark.parametrize("name,call,error,match", ATTACK_CASES, ids=[case[0] for case in ATTACK_CASES])
def test_attacks_reject_bad_input_naming_the_argument(name, call, error, match):
    with pytest.raises(error, match=match):
        call()


# ------------------------------------------------------------------------ case 2: NaN/Inf outputs


class NonFinite(nn.Module):
    """Finite logits except for the examples in ``rows``, whose logits are ``value``."""

    def __init__(self, rows=(1,), value=float("nan")):
        super().__init__()
        self.net, self.rows, self.value = linear(), list(rows), value

    def forward(self, x):
        logits = self.net(x)
        mask = torch.zeros(x.shape[0], 1, dtype=torch.bool)
        mask[[r for r in self.rows if r < x.shape[0]]] = True
        return torch.where(mask, torch.full_like(logits, self.value), logits)


ATTACKS = {
    "PGD": lambda: PGD("linf", 0.1, steps=3, step_size=0.05),
    "PGD-l2-margin": lambda: PGD("l2", eps=0.5, steps=3, step_size=0.1, loss="margin"),
    "CW": lambda: CarliniWagnerL2(steps=3, binary_search_steps=1),
    "Penalized": lambda: PenalizedGradientDescent("l2", eps=0.5, steps=3),
    "Transfer": lambda: TransferAttack(PGD("linf", 0.1, steps=2), linear()),
}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_refuse_non_finite_logits_instead_of_reporting_success(attack, value):
    with pytest.raises(NonFiniteOutputError, match=r"model: its output \(logits\) contains NaN or Inf for 1 of the "
                                                   r"batch's 4 examples \(rows 1 of the batch\)"):
        ATTACKS[attack]()(NonFinite(value=value), images(), LABELS)


def test_eot_and_lspga_refuse_non_finite_logits():
    with pytest.raises(NonFiniteOutputError, match="model: its output"):
        PGD("linf", 0.1, steps=2)(EOT(NonFinite(), samples=2), images(), LABELS)
    with pytest.raises(NonFiniteOutputError, match="model: its output"):
        EOT(NonFinite(), samples=2)(images())
    net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))
    with pytest.raises(NonFiniteOutputError, match="model.classifier: its output"):
        LSPGA(eps=0.1, steps=1)(ThermometerDefense(_NaNHead(net)), images(), LABELS)


class _NaNHead(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, codes):
        return self.net(codes) * float("nan")


def test_evaluate_refuses_non_finite_logits_naming_the_batch():
    x = images(6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(NonFiniteOutputError, match=r"contains NaN or Inf for 1 of the batch's 2 examples \(rows 1 of "
                                                   r"the batch\).*\[evaluate: batch 2, examples 4..5 of x\]"):
        evaluate(_NaNOnExample(5), PGD("linf", 0.1, steps=1), x, y, distance="linf", eps=0.1, batch_size=2,
                 progress=False, seed=0)


class _NaNOnExample(nn.Module):
    """NaN logits for the example whose first pixel equals that of example ``index`` of images(6)."""

    def __init__(self, index):
        super().__init__()
        self.net, self.marker = linear(), images(6)[index, 0, 0, 0].item()

    def forward(self, x):
        logits = self.net(x)
        hit = (x[:, 0, 0, 0] == self.marker).view(-1, 1)
        return torch.where(hit, torch.full_like(logits, float("nan")), logits)


def test_diagnose_refuses_a_deterministic_nan_model_instead_of_calling_it_randomized():
    with pytest.raises(NonFiniteOutputError, match="model: its output"):
        diagnose(NonFinite(rows=range(8)), images(8), torch.zeros(8, dtype=torch.long), eps=0.1, progress=False,
                 budget=DiagnoseBudget(steps=2, random_samples=2, surrogate_steps=2))


# ------------------------------------------------------------------------ case 13: empty batches


@pytest.mark.parametrize("attack", sorted(ATTACKS) + ["LSPGA", "EOT-PGD"])
def test_attacks_accept_an_empty_batch_like_the_ops(attack):
    x, y = images(0), torch.zeros(0, dtype=torch.long)
    if attack == "LSPGA":
        result = LSPGA(eps=0.1, steps=2)(ThermometerDefense(nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 3))), x, y)
    elif attack == "EOT-PGD":
        result = PGD("linf", 0.1, steps=2)(EOT(linear(), samples=2), x, y)
    else:
        result = ATTACKS[attack]()(linear(), x, y)
    assert result.x_adv.shape == (0, 1, 4, 4) and result.success.shape == (0,) and result.distance.shape == (0,)
    assert result.steps.dtype == torch.long and result.success.dtype == torch.bool


def test_latent_attack_accepts_an_empty_batch():
    clf = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    attack = LatentAttack(_generator(), inversion_steps=1, inversion_restarts=1, steps=1, binary_search_steps=1)
    assert attack(clf, torch.zeros(0, 1, 28, 28), torch.zeros(0, dtype=torch.long)).x_adv.shape == (0, 1, 28, 28)


# ------------------------------------------------------------------------ evaluate

EVALUATE_CASES = [
    ("model", dict(model="net"), TypeError, "model: expected a callable"),
    ("attack", dict(attack="pgd"), TypeError, "attack: expected a callable"),
    ("x empty", dict(x=images(0), y=torch.zeros(0, dtype=torch.long)), ValueError, "x: expected a non-empty batch"),
    ("x nan", dict(x=_nan_images()), ValueError, "x: contains NaN"),
    ("y shape", dict(y=LABELS[:2]), ValueError, "y: expected shape"),
    ("y float", dict(y=LABELS.float()), TypeError, "y: expected an integer"),
    ("targets equal y", dict(targets=LABELS), ValueError, "targets: every target must differ"),
    ("distance", dict(distance="l1"), ValueError, "distance: expected one of"),
    ("eps", dict(eps=-0.1), ValueError, "eps: expected a number > 0"),
    ("batch_size", dict(batch_size=0), ValueError, "batch_size: expected an int >= 1"),
    ("seed", dict(seed=-1), ValueError, "seed: expected an int >= 0"),
    ("predict", dict(predict="argmax"), TypeError, "predict: expected a callable"),
    ("predict logits", dict(predict=lambda v: linear()(v)), ValueError,
     r"predict: expected integer class labels of shape \(4,\)"),
    ("attack result", dict(attack=lambda m, x, y: x), TypeError, "attack: expected it to return an AttackResult"),
    ("attack nan x_adv", dict(attack=lambda m, x, y: _nan_result(x)), ValueError, "attack: returned an x_adv with NaN"),
]


def _nan_result(x):
    from obfgrad.attacks import AttackResult

    n = x.shape[0]
    return AttackResult(x.clone().fill_(float("nan")), torch.zeros(n, dtype=torch.bool), torch.zeros(n),
                        torch.zeros(n, dtype=torch.long))


@pytest.mark.parametrize("name,changes,error,match", EVALUATE_CASES, ids=[case[0] for case in EVALUATE_CASES])
def test_evaluate_rejects_bad_input_naming_the_argument(name, changes, error, match):
    arguments = dict(model=linear(), attack=PGD("linf", 0.1, steps=1), x=images(), y=LABELS, distance="linf", eps=0.1,
                     progress=False, seed=0)
    arguments.update(changes)
    with pytest.raises(error, match=match):
        evaluate(arguments.pop("model"), arguments.pop("attack"), arguments.pop("x"), arguments.pop("y"), **arguments)


# ------------------------------------------------------------------------ diagnose

DIAGNOSE_CASES = [
    ("model", dict(model=None), TypeError, "model: expected a callable"),
    ("preprocess", dict(preprocess=3), TypeError, "preprocess: expected a callable"),
    ("x empty", dict(x=images(0), y=torch.zeros(0, dtype=torch.long)), ValueError, "x: expected a non-empty batch"),
    ("x numpy", dict(x=np.zeros((4, 1, 4, 4), np.float32)), TypeError, "x: expected a torch.Tensor"),
    ("y missing", dict(y=None), ValueError, "y: labels are required"),
    ("y shape", dict(y=LABELS[:2]), ValueError, "y: expected shape"),
    ("eps", dict(eps=0), ValueError, "eps: expected a positive finite budget"),
    ("eps nan", dict(eps=float("nan")), ValueError, "eps: expected a positive finite budget"),
    ("distance", dict(distance="l0"), ValueError, "distance: expected one of"),
    ("budget steps", dict(budget=DiagnoseBudget(steps=0)), ValueError, "budget.steps: expected an int >= 1"),
    ("budget tolerance", dict(budget=DiagnoseBudget(tolerance=2.0)), ValueError, "budget.tolerance"),
    ("budget eps multiples", dict(budget=DiagnoseBudget(eps_multiples=(-1.0,))), ValueError, "budget.eps_multiples"),
    ("seed", dict(seed="0"), TypeError, "seed: expected an int"),
    ("none correct", dict(y=(linear()(images()).argmax(1) + 1) % 3), ValueError,
     "x, y: the defended model classifies none of the examples correctly"),
]


@pytest.mark.parametrize("name,changes,error,match", DIAGNOSE_CASES, ids=[case[0] for case in DIAGNOSE_CASES])
def test_diagnose_rejects_bad_input_naming_the_argument(name, changes, error, match):
    arguments = dict(model=linear(), x=images(), y=LABELS, eps=0.1, progress=False,
                     budget=DiagnoseBudget(steps=2, random_samples=2, surrogate_steps=2))
    arguments.update(changes)
    with pytest.raises(error, match=match):
        diagnose(arguments.pop("model"), arguments.pop("x"), arguments.pop("y"), **arguments)


# ------------------------------------------------------------------------ training that diverges


def test_training_that_diverges_stops_at_once_and_caches_nothing(tmp_path, monkeypatch):
    from obfgrad.models.training import make_recipe, train_or_load

    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    generator = torch.Generator().manual_seed(0)
    data = (torch.rand(64, 1, 28, 28, generator=generator), torch.randint(0, 10, (64,), generator=generator))
    recipe = make_recipe(epochs=3, batch_size=16, optimizer="sgd", lr=1e30, momentum=0.0)
    with pytest.raises(FloatingPointError, match=r"train small_cnn \(epoch \d+, batch \d+\): the training loss "
                                                 r"became (nan|inf)"):
        train_or_load(recipe, data_fn=lambda r: data, progress=False)
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_diagnose_still_reads_a_cut_graph_as_an_all_zero_gradient():
    """The attacks now refuse a model whose graph does not reach x (NoGradientError); diagnose's
    probe still reads such a model with trainable weights as it did: an all-zero gradient."""
    net = linear()
    x = images(8)
    y = net(x).argmax(1)
    cut = _Cut(net)
    with pytest.raises(NoGradientError) as info:
        PGD("linf", 0.1, steps=1)(cut, x, y)
    assert info.value.output_in_graph
    report = diagnose(cut, x, y, eps=0.1, progress=False, surrogate=net,
                      budget=DiagnoseBudget(steps=2, random_samples=2, eps_multiples=(0.5,)))
    probes = report.config["probes"]
    assert probes["gradient_path"] and probes["all_zero_examples"] == 1.0
    assert "shattered" in report.obfuscation_types


class _Cut(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x.detach() * 4) / 4)
