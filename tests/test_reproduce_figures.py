"""Accuracy-vs-eps curves and the Table 1 figures: the curve against the closed-form answer of a
linear model, the figures from a small fake results dict, the runner's curve caching, and a dry
run of the runner writing the figures."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.eval import accuracy_vs_eps, clopper_pearson  # noqa: E402
from reproduce import curves, figures, provenance, runner  # noqa: E402
from reproduce.spec import DefenseBundle, RowSpec, RunContext  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _Linear(nn.Module):
    """Two classes, logits (s, -s) with s = w . (x - 0.5): the margin of the true class is 2|s|
    signed, and the strongest perturbation of size eps lowers it by 2 eps ||w||_dual."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = weight

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5).flatten(1) @ self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)
        return torch.stack([s, -s], dim=1)


def _linear_problem(n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(12, generator=generator)
    # Images inside [0.3, 0.7]: for eps <= 0.2 the [0, 1] box never clips the optimal step.
    x = 0.3 + 0.4 * torch.rand((n, 3, 2, 2), generator=generator)
    y = torch.randint(0, 2, (n,), generator=generator)  # about half wrong on clean inputs
    return _Linear(weight), x, y


def _closed_form_accuracy(model: _Linear, x, y, eps: float, dual_norm: float) -> float:
    signed_score = torch.where(y == 0, model.score(x), -model.score(x))  # > 0 iff correct
    return float((signed_score > eps * dual_norm).float().mean())


@pytest.mark.parametrize("distance", ["linf", "l2"])
def test_linear_model_curve_matches_the_closed_form_and_falls_to_zero(distance):
    model, x, y = _linear_problem()
    dual_norm = float(model.weight.abs().sum() if distance == "linf" else model.weight.norm())
    grid = [0.0, 0.025, 0.05, 0.1, 0.15, 0.2]
    curve = accuracy_vs_eps(model, x, y, distance=distance, eps_grid=grid, steps=20)
    clean = float((model(x).argmax(1) == y).float().mean())
    assert curve.eps == grid and curve.n == x.shape[0] and curve.steps == 20
    assert curve.accuracy[0] == clean
    for eps, accuracy in zip(grid, curve.accuracy):
        assert abs(accuracy - _closed_form_accuracy(model, x, y, eps, dual_norm)) <= 1 / x.shape[0], eps
    assert all(a >= b for a, b in zip(curve.accuracy, curve.accuracy[1:]))
    # The whole box (l-inf 1): the vertex opposite the weight's sign flips every example.
    assert accuracy_vs_eps(model, x, y, distance="linf", eps_grid=[1.0], steps=20).accuracy == [0.0]


def test_attack_model_is_differentiated_and_model_judges():
    model, x, y = _linear_problem()
    flat = lambda v: model(v).detach() + 0.0 * v.flatten(1).sum(1, keepdim=True)  # noqa: E731 (zero gradient)
    curve = accuracy_vs_eps(model, x, y, distance="linf", eps_grid=[0.0, 0.1, 0.2], steps=10, attack_model=flat)
    clean = float((model(x).argmax(1) == y).float().mean())
    assert curve.accuracy == [clean, clean, clean]  # no gradient, no progress: the judge sees clean inputs


def test_eps_grid_is_validated():
    model, x, y = _linear_problem(n=4)
    with pytest.raises(ValueError, match="eps_grid"):
        accuracy_vs_eps(model, x, y, distance="linf", eps_grid=[-0.1], steps=5)
    with pytest.raises(ValueError, match="eps_grid"):
        accuracy_vs_eps(model, x, y, distance="linf", eps_grid=[], steps=5)


# -- figures ---------------------------------------------------------------------------------------

def _spec(name, eps=0.1, build_defense=None, run=None, curve=None):
    return RowSpec(name=name, defense=f"toy {name}", dataset="toy", distance="linf", eps=eps,
                   paper_dataset="CIFAR-10", paper_bound="0.031 (ℓ∞)", paper_accuracy=0.05, n_examples=8,
                   config={"toy": name}, run=run, build_defense=build_defense, curve=curve)


def _fake_result(with_curve: bool):
    result = {"clean_accuracy": 0.9, "own_attack_accuracy": 0.8, "adaptive_accuracy": 0.1,
              "adaptive_ci95": [0.05, 0.2], "n": 100, "wall_seconds": 1.0,
              "attacks": {"own": {"ci95": [0.7, 0.88]}}}
    if with_curve:
        result["eps_curve"] = {"eps": [0, 0.05, 0.1, 0.2], "accuracy": [0.9, 0.5, 0.1, 0.0], "n": 100, "steps": 20,
                               "attack": "PGD", "judged": "classifier accuracy"}
    return result


def _assert_png(path: Path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_figures_are_written_from_a_results_dict(tmp_path):
    specs = [_spec("thermometer"), _spec("lid"), _spec("guo"), _spec("madry")]  # madry without a result: no panel
    guo = _fake_result(True)
    guo["eps_curve"]["variant"] = "quilting"  # a row with several variants: the star is the curve's variant
    guo["transforms"] = {"quilting": {"adaptive_accuracy": 0.0}}
    results = {"thermometer": _fake_result(True), "lid": _fake_result(False), "guo": guo}
    paths = figures.write_figures(tmp_path, specs, results, log=lambda message: None)
    assert set(paths) == {"own_vs_adaptive", "eps_curves"}
    assert paths["own_vs_adaptive"] == tmp_path / "figures" / "own_vs_adaptive.png"
    for path in paths.values():
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == ["eps_curves.png", "own_vs_adaptive.png"]


def test_without_matplotlib_figures_are_skipped_with_one_log_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import raises ImportError
    lines = []
    paths = figures.write_figures(tmp_path, [_spec("sap")], {"sap": _fake_result(True)}, log=lines.append)
    assert paths == {} and len(lines) == 1 and "matplotlib" in lines[0]
    assert not (tmp_path / "figures").exists()


# -- the runner's curves ---------------------------------------------------------------------------

def _linear_row(name, runs):
    model, x, y = _linear_problem(n=8)

    def run(spec, ctx):
        runs.append(name)
        return {"clean_accuracy": 0.5, "own_attack_accuracy": 0.5, "adaptive_accuracy": 0.0,
                "adaptive_ci95": list(clopper_pearson(0, 8)), "n": 8}

    def build_defense(spec, ctx, n):
        return DefenseBundle(model=model, undefended=model, x=x[:n], y=y[:n], distance="linf", eps=spec.eps)

    return _spec(name, run=run, build_defense=build_defense, curve={"examples": 6, "steps": 5})


def test_runner_adds_the_curve_once_and_to_cached_results_without_rerunning_the_row(tmp_path, monkeypatch):
    ctx = RunContext(results_dir=tmp_path, progress=False, log=lambda message: None)
    runs = []
    spec = _linear_row("sap", runs)
    first = runner.run_table([spec], ctx)
    curve = first["results"]["sap"]["eps_curve"]
    assert curve["n"] == 6 and curve["steps"] == 5 and len(curve["accuracy"]) == len(curves.EPS_MULTIPLES)
    assert curve["eps"] == pytest.approx([m * spec.eps for m in curves.EPS_MULTIPLES])
    stored = json.loads((tmp_path / "rows" / "sap.json").read_text())
    assert stored["result"]["eps_curve"] == curve
    _assert_png(first["paths"]["eps_curves"])

    # A result cached without a curve (as the runner writes it before the curve) gains one; the row
    # itself is not run again.
    del stored["result"]["eps_curve"]
    stored["checksum"] = provenance.result_checksum(stored["result"])
    (tmp_path / "rows" / "sap.json").write_text(json.dumps(stored))
    runner.run_table([spec], ctx)
    assert runs == ["sap"]
    refreshed = json.loads((tmp_path / "rows" / "sap.json").read_text())["result"]["eps_curve"]
    assert refreshed["accuracy"] == curve["accuracy"]

    # Warm: nothing is recomputed.
    monkeypatch.setattr(curves, "row_eps_curve", lambda spec, ctx: pytest.fail("curve recomputed"))
    runner.run_table([spec], ctx)
    assert runs == ["sap"]


def test_curve_budget_follows_the_profile_the_row_override_and_the_limit():
    spec, plain = _spec("guo", curve={"examples": 20, "steps": 10}), _spec("madry")
    smoke_default = curves.DEFAULT_BUDGET["smoke"]["examples"]
    assert curves.curve_settings(plain, RunContext(profile="smoke"))["examples"] == smoke_default
    assert curves.curve_settings(spec, RunContext(profile="smoke"))["steps"] == 10
    assert curves.curve_settings(spec, RunContext(profile="smoke", limit=5))["examples"] == 5
    dry = curves.curve_settings(spec, RunContext(profile="paper", dry_run=True))
    assert (dry["examples"], dry["steps"]) == (2, 2)
    assert not curves.needs_curve(_spec("na"), RunContext(), {})  # no build_defense: no curve


def test_dry_run_writes_the_figures(tmp_path, capsys):
    results_dir = tmp_path / "results"
    assert runner.main(["--profile", "paper", "--dry-run", "--rows", "madry", "--results-dir", str(results_dir),
                        "--quiet"]) == 0
    for name in ("own_vs_adaptive.png", "eps_curves.png"):
        _assert_png(results_dir / "figures" / name)
    curve = json.loads((results_dir / "rows" / "madry.json").read_text())["result"]["eps_curve"]
    assert (curve["n"], curve["steps"], len(curve["eps"])) == (2, 2, len(curves.DRY_RUN_EPS_MULTIPLES))
    assert "eps_curves.png" in capsys.readouterr().out


def test_own_evaluation_ci_is_found_under_the_rows_attack_names():
    thermometer = {"own_attack_accuracy": 0.65,
                   "attacks": {"own_plain_gradient": {"accuracy": 0.9, "ci95": [0.68, 0.98]},
                               "own_lspga": {"accuracy": 0.65, "ci95": [0.41, 0.85]},
                               "adaptive": {"accuracy": 0.05, "ci95": [0.0, 0.25]}}}
    assert figures._own_ci(thermometer) == [0.41, 0.85]
    only_adaptive = {"own_attack_accuracy": 0.5, "attacks": {"adaptive": {"accuracy": 0.5, "ci95": [0, 1]}}}
    assert figures._own_ci(only_adaptive) is None
    assert figures._error_bar(0.5, None) is None
    assert figures._error_bar(0.5, [0.25, 0.75]) == [[0.25], [0.25]]


class _FlagRecorder(nn.Module):
    """Wraps a model and records the training flag it sees at every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(self.training)
        return self.model(x)


def test_row_curve_runs_in_eval_mode_and_gives_the_training_flags_back():
    linear, x, y = _linear_problem(n=8)
    recorder = _FlagRecorder(linear).train()
    linear.eval()  # a mixed model: its submodule's own flag must come back too

    def build_defense(spec, ctx, n):
        return DefenseBundle(model=recorder, undefended=recorder, x=x[:n], y=y[:n], distance="linf", eps=spec.eps)

    spec = _spec("sap", build_defense=build_defense, curve={"examples": 4, "steps": 2})
    curves.row_eps_curve(spec, RunContext(progress=False, log=lambda message: None))
    assert recorder.seen and not any(recorder.seen)  # evaluated in eval mode
    assert recorder.training and not linear.training  # and each flag restored afterwards
