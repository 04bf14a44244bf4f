"""reproduce.estimate: the work of a row x measured unit costs, and the command line."""

from __future__ import annotations

import json

import pytest

from reproduce import estimate, fidelity, paper_entries, paper_plans
from reproduce.rows import all_specs
from reproduce.spec import ROW_NAMES, RowSpec


def _fake_madry_spec() -> RowSpec:
    """A Madry-shaped spec with small, distinct numbers so every product is checkable by hand."""
    adversarial = {"eps": 0.03, "steps": 3, "step_size": 0.01, "distance": "linf"}
    classifier = {"arch": "wide_resnet", "arch_kwargs": {"widths": [16, 32, 64], "units_per_stage": 1},
                  "dataset": "cifar10", "epochs": 2, "adversarial": adversarial}
    return RowSpec(name="madry", defense="fake", dataset="cifar10", distance="linf", eps=0.03, paper_dataset="-",
                   paper_bound="-", paper_accuracy=0.0, n_examples=7, work_plan=paper_plans.madry,
                   fidelity=paper_entries.MADRY, config={
                       "eps": 0.03, "classifier": classifier, "natural_twin": {**classifier, "adversarial": None},
                       "own_attack": {"steps": 5, "step_size": 0.01, "loss": "ce", "random_start": True,
                                      "restarts": 1},
                       "adaptive_attack": {"steps": 11, "step_size": 0.003, "loss": "margin", "random_start": True,
                                           "restarts": 2}})


def test_work_times_unit_cost_on_a_fake_spec():
    spec = _fake_madry_spec()
    resolved = fidelity.resolve(["madry"], {"madry": spec})
    row = estimate.estimate(estimate.plan(spec, resolved), {"wide_resnet": 0.5})
    attacks = {item["label"]: item for item in row["attacks"]}
    own = attacks["own: PGD-20, cross-entropy"]
    assert own["gradient_evaluations"] == 7 * 5
    assert own["hours"] == pytest.approx(7 * 5 * 0.5 / 3600)
    adaptive = attacks["adaptive: PGD, CW margin, restarts"]
    assert adaptive["gradient_evaluations"] == 7 * 11 * 2
    assert row["gradient_evaluations"] == 7 * 5 + 2 * (7 * 11 * 2)  # own + adaptive + natural twin
    assert row["attack_hours"] == pytest.approx(row["gradient_evaluations"] * 0.5 / 3600)
    assert row["seconds_per_example_step"] == 0.5
    training = {item["label"]: item for item in row["training"]}
    adversarial = training["training: PGD adversarial training"]
    assert adversarial["gradient_evaluations"] == 50_000 * 2 * (1 + 3)
    assert row["training_hours_rough"] == pytest.approx((50_000 * 2 * 4 + 50_000 * 2) * 0.5 / 3600)
    assert row["label"] == estimate.LABEL


def test_units_per_evaluation_add_up():
    work = estimate.Work("w", examples=3, steps=4, units={"a": 1024, "b": 1}, eot_samples=5, restarts=2)
    assert work.gradient_evaluations == 3 * 4 * 5 * 2
    assert work.seconds({"a": 0.001, "b": 0.25}) == pytest.approx(120 * (1.024 + 0.25))


def test_pixeldefend_counts_one_purification_of_32_rows_per_step():
    (spec,) = all_specs(["pixeldefend"], "paper", False)
    resolved = fidelity.resolve(fidelity.entries_of("pixeldefend"), {"pixeldefend": spec})
    adaptive = estimate.plan(spec, resolved).work[0]
    assert adaptive.units == {"pixeldefend_row_32": 32, "wide_resnet": 1}
    assert adaptive.gradient_evaluations == 100 * 100


def test_quilting_extrapolates_linearly_in_the_database_size():
    small, large = estimate.QUILT_SIZES
    costs = {f"quilting_299@{small}": 1.0, f"quilting_299@{large}": 1.0 + (large - small) * 1e-6}
    derived = estimate.with_derived(costs, 1_000_000)
    assert derived["quilting_299"] == pytest.approx(1.0 + (1_000_000 - small) * 1e-6)


def test_cli_writes_json_for_a_cheap_row(tmp_path, capsys):
    out = tmp_path / "estimate.json"
    assert estimate.main(["--rows", "defensegan", "--batch", "1", "--repeats", "1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["label"] == estimate.LABEL and report["device"] == "cpu"
    assert report["batch"] == 1 and report["repeats"] == 1
    assert set(report["units"]) == {"dcgan_generator", "mnist_cnn"}
    assert all(unit["seconds_per_item"] > 0 for unit in report["units"].values())
    row = report["rows"]["defensegan"]
    for key in ("seconds_per_example_step", "gradient_evaluations", "attack_hours", "attacks", "training",
                "training_hours_rough", "training_not_estimated", "excluded", "label"):
        assert key in row
    generator = report["units"]["dcgan_generator"]["seconds_per_item"]
    classifier = report["units"]["mnist_cnn"]["seconds_per_item"]
    bpda = row["attacks"][0]
    assert bpda["seconds_per_evaluation"] == pytest.approx(200 * 10 * generator + classifier)
    assert bpda["hours"] == pytest.approx(100 * 100 * bpda["seconds_per_evaluation"] / 3600)
    assert estimate.LABEL in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--rows", "nosuchrow"], "--rows: unknown nosuchrow"),
    (["--batch", "0"], "--batch: expected a positive integer"),
    (["--repeats", "0"], "--repeats: expected a positive integer"),
    (["--device", "tpu"], "--device: expected cpu or cuda"),
])
def test_bad_arguments_give_a_clear_error(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        estimate.main(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["under a file", "a folder"])
def test_a_bad_json_location_is_refused_before_any_measurement(tmp_path, monkeypatch, capsys, where):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "e.json" if where == "under a file" else tmp_path
    measured = []
    monkeypatch.setattr(estimate, "run", lambda *a, **k: measured.append(1))
    with pytest.raises(SystemExit) as raised:
        estimate.main(["--rows", "defensegan", "--json", str(target)])
    assert raised.value.code == 2 and measured == []
    assert "--json: " in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also where a GPU is present
    with pytest.raises(SystemExit):
        estimate.main(["--rows", "defensegan", "--device", "cuda"])
    assert "torch sees no CUDA device" in capsys.readouterr().err


def test_every_row_has_a_plan_over_measurable_units():
    plans = estimate.plans(all_specs(list(ROW_NAMES), "paper", False))
    assert [row_plan.row for row_plan in plans] == list(ROW_NAMES)
    needed = estimate.units_needed(plans)
    assert set(needed) <= set(estimate.UNITS)
    assert "inception_v3_299" in needed and "pixeldefend_row_32" in needed
