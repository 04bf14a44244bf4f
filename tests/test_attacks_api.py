"""The public attack API is uniform: required arguments positional, the rest keyword-only; one name
per concept (``seed``, ``step_size``, ``update``, ``progress``); the iterative gradient attacks share
one active-set loop; every long attack has a progress bar."""

import inspect

import pytest
import torch
from attack_models import small_cnn

from obfgrad.attacks import (
    EOT,
    LSPGA,
    PGD,
    CarliniWagnerL2,
    LatentAttack,
    PenalizedGradientDescent,
    invert,
)
from obfgrad.attacks.base import ActiveSetAttack
from obfgrad.defenses import ThermometerDefense

#: callable -> its required (positional) parameters
REQUIRED = {PGD: ["distance", "eps"], PenalizedGradientDescent: ["distance", "eps"], LSPGA: ["eps"],
            CarliniWagnerL2: [], LatentAttack: ["generator"], EOT: ["model"], invert: ["generator", "x"]}
LONG_ATTACKS = (PGD, PenalizedGradientDescent, LSPGA, CarliniWagnerL2, LatentAttack, invert)


def _parameters(fn):
    target = fn.__init__ if inspect.isclass(fn) else fn
    return [p for p in inspect.signature(target).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("fn", list(REQUIRED), ids=lambda f: f.__name__)
def test_required_arguments_are_positional_and_the_rest_keyword_only(fn):
    params = _parameters(fn)
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == REQUIRED[fn]
    assert all(p.default is p.empty for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
    assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name not in REQUIRED[fn])


def test_a_setting_passed_by_position_is_refused():
    with pytest.raises(TypeError):
        PGD("linf", 0.1, 10)
    with pytest.raises(TypeError):
        EOT(torch.nn.Identity(), 10)


@pytest.mark.parametrize("fn", list(REQUIRED), ids=lambda f: f.__name__)
def test_one_name_per_concept(fn):
    names = {p.name for p in _parameters(fn)}
    assert not names & {"generator_seed", "normalize"}  # seed= and update= everywhere
    if fn in (PGD, PenalizedGradientDescent, LSPGA):  # the step of the attacked variable
        assert "step_size" in names and "lr" not in names


@pytest.mark.parametrize("cls", LONG_ATTACKS, ids=lambda c: c.__name__)
def test_every_long_attack_has_a_progress_option(cls):
    param = inspect.signature(cls.__init__ if inspect.isclass(cls) else cls).parameters["progress"]
    assert param.kind is param.KEYWORD_ONLY and param.default is False


def test_pgd_and_penalized_descent_share_the_active_set_loop():
    for cls in (PGD, PenalizedGradientDescent):
        assert issubclass(cls, ActiveSetAttack) and "_descend" not in vars(cls)


def _bar_output(attack, model, x, y, capsys, monkeypatch):
    """What the attack writes to stderr when tqdm believes stderr is a terminal."""
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    attack(model, x, y)
    return capsys.readouterr().err


@pytest.mark.parametrize("name", ["penalized", "lspga", "pgd"])
def test_long_attacks_draw_a_bar_only_when_asked(name, capsys, monkeypatch):
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1])
    if name == "lspga":
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 784, 10))
        model, make = ThermometerDefense(net), lambda progress: LSPGA(0.1, steps=3, progress=progress)
    elif name == "penalized":
        model = small_cnn(seed=0)
        make = lambda progress: PenalizedGradientDescent("l2", 0.5, steps=3, progress=progress)  # noqa: E731
    else:
        model, make = small_cnn(seed=0), lambda progress: PGD("linf", 0.1, steps=3, progress=progress)
    label = {"penalized": "penalized descent", "lspga": "LS-PGA", "pgd": "PGD"}[name]
    assert label in _bar_output(make(True), model, x, y, capsys, monkeypatch)
    assert _bar_output(make(False), model, x, y, capsys, monkeypatch) == ""
