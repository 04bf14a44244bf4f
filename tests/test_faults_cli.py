"""The command lines check everything they are given before any work (issue 15, cases 3, 7, 8,
9, 13): one table for ``obfgrad diagnose``, one for ``python -m reproduce``; each bad input
gets a message naming the option, and nothing is built, trained or attacked first."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad.cli import main as cli_main  # noqa: E402
from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import ROW_NAMES  # noqa: E402


@pytest.fixture
def files(tmp_path):
    """A user module whose factory leaves a marker when it runs, a good --data file, a file."""
    marker = tmp_path / "factory_ran"
    (tmp_path / "mine.py").write_text(
        "import pathlib, torch\n"
        "def build():\n"
        f"    pathlib.Path({str(marker)!r}).write_text('ran')\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "def boom():\n"
        "    raise ValueError('boom in the factory')\n"
        "def number():\n"
        "    return 3\n")
    (tmp_path / "broken.py").write_text("import torch\nraise ImportError('no module named tensorflow')\n")
    torch.save({"x": torch.rand(4, 1, 2, 2), "y": torch.zeros(4, dtype=torch.long)}, tmp_path / "data.pt")
    torch.save({"x": torch.rand(4, 1, 2, 2)}, tmp_path / "no_y.pt")
    (tmp_path / "corrupt.pt").write_bytes((tmp_path / "data.pt").read_bytes()[:100])
    (tmp_path / "a_file").write_text("x")
    return tmp_path, marker


def _model_args(tmp_path, *extra, factory="build"):
    return ["diagnose", "--model", f"{tmp_path / 'mine.py'}:{factory}", "--eps", "0.1", "--data",
            str(tmp_path / "data.pt"), "--quiet", *extra]


DIAGNOSE_CASES = [
    ("data missing", lambda t: _model_args(t)[:6] + [str(t / "missing.pt")], r"--data: cannot read .*missing.pt"),
    ("data corrupt", lambda t: _model_args(t)[:6] + [str(t / "corrupt.pt")], r"--data: cannot read .*corrupt.pt"),
    ("data without y", lambda t: _model_args(t)[:6] + [str(t / "no_y.pt")], "--data: expected a torch.save'd dict"),
    ("factory raises", lambda t: _model_args(t, factory="boom"),
     r"--model: your factory .*:boom raised ValueError: boom"),
    ("file raises", lambda t: ["diagnose", "--model", f"{t / 'broken.py'}:build", "--eps", "0.1"],
     "--model: importing your file .* raised ImportError: no module named tensorflow"),
    ("factory returns a number", lambda t: _model_args(t, factory="number"),
     "--model: the factory must return a model"),
    ("no such factory", lambda t: _model_args(t, factory="nope"), "has no callable 'nope'"),
    ("seed", lambda t: _model_args(t, "--seed", "-1"), "--seed: expected an int >= 0"),
    ("seed too large", lambda t: _model_args(t, "--seed", str(2**40)), "--seed: expected an int <= 4294967295"),
    ("device", lambda t: _model_args(t, "--device", "tpu"), "--device: not a torch device: 'tpu'"),
    ("device meta", lambda t: _model_args(t, "--device", "meta"), "--device: 'meta': only cpu and cuda"),
    ("json under a file", lambda t: _model_args(t, "--json", str(t / "a_file" / "r.json")),
     "--json: .*a_file exists and is not a directory"),
    ("json is a folder", lambda t: _model_args(t, "--json", str(t)), "--json: .* is a directory"),
    ("plot under a file", lambda t: _model_args(t, "--plot", str(t / "a_file" / "r.png")),
     "--plot: .*a_file exists and is not a directory"),
    ("out-dir is a file", lambda t: _model_args(t, "--out-dir", str(t / "a_file")), "--out-dir: .* is not a directory"),
    ("eps negative", lambda t: _model_args(t, "--eps", "-1"), "--eps: expected a positive finite budget"),
    ("eps nan", lambda t: _model_args(t, "--eps", "nan"), "--eps: expected a positive finite budget"),
    ("distance", lambda t: _model_args(t, "--distance", "l3"), "distance: expected one of"),
    ("steps", lambda t: _model_args(t, "--steps", "0"), "budget.steps: expected an int >= 1"),
    ("tolerance", lambda t: _model_args(t, "--tolerance", "1.5"), "budget.tolerance"),
    ("one gradient call", lambda t: _model_args(t, "--grad-repeats", "1"), "budget.grad_repeats: expected an int >= 2"),
    ("examples", lambda t: _model_args(t, "--examples", "0"), "--examples: expected a positive number"),
    ("data and dataset", lambda t: _model_args(t, "--dataset", "mnist"), "--data, --dataset: give one of them"),
    ("data-dir", lambda t: _model_args(t, "--data-dir", str(t / "nowhere")), "--data-dir: .* is not a directory"),
    ("defense with eps", lambda t: ["diagnose", "--defense", "madry", "--eps", "0.1"], "--eps: only with --model"),
    ("defense with data", lambda t: ["diagnose", "--defense", "madry", "--data", str(t / "data.pt")],
     "--data: only with --model"),
    ("all without out-dir", lambda t: ["diagnose", "--defense", "all", "--dry-run"], "--out-dir: --defense all"),
    ("several with one json", lambda t: ["diagnose", "--defense", "guo", "--dry-run", "--json", str(t / "r.json")],
     "--json/--plot: --defense guo diagnoses 5 defenses"),
    ("unknown defense", lambda t: ["diagnose", "--defense", "nope"], "--defense: unknown 'nope'"),
    ("dry run with a model", lambda t: _model_args(t, "--dry-run"), "--dry-run/--profile: only with --defense"),
    ("profile with a model", lambda t: _model_args(t, "--profile", "paper"),
     "--dry-run/--profile: only with --defense"),
    ("model outputs nan", lambda t: _nan_model_args(t), r"model: its output \(logits\) contains NaN"),
]


def _nan_model_args(tmp_path):
    (tmp_path / "nan.py").write_text("import torch\ndef build():\n    return lambda x: torch.full((x.shape[0], 3), "
                                     "float('nan'))\n")
    return ["diagnose", "--model", f"{tmp_path / 'nan.py'}:build", "--eps", "0.1", "--data", str(tmp_path / "data.pt"),
            "--quiet", "--steps", "2"]


@pytest.mark.parametrize("name,argv,match", DIAGNOSE_CASES, ids=[case[0] for case in DIAGNOSE_CASES])
def test_diagnose_command_rejects_bad_input_before_any_work(files, capsys, name, argv, match):
    tmp_path, marker = files
    with pytest.raises(SystemExit) as info:
        cli_main(argv(tmp_path))
    message = str(info.value.code) if isinstance(info.value.code, str) else capsys.readouterr().err
    assert info.value.code != 0
    import re

    assert re.search(match, message), message
    if name not in ("factory raises", "file raises", "factory returns a number", "model outputs nan"):
        assert not marker.exists(), "the factory ran before the options were checked"
    assert "Traceback" not in message


def test_dataset_names_are_checked_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        cli_main(["diagnose", "--model", "x.py:f", "--dataset", "svhn"])
    assert "invalid choice: 'svhn'" in capsys.readouterr().err


# ------------------------------------------------------------------------ python -m reproduce


def _runner_cases(tmp_path):
    (tmp_path / "weights.pt").write_bytes(b"w")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "rows_is_a_file").mkdir()
    (tmp_path / "rows_is_a_file" / "rows").write_text("x")
    weights = str(tmp_path / "weights.pt")
    results = ["--results-dir", str(tmp_path / "results")]
    return [
        ("seed negative", ["--seed", "-1"], "--seed: expected an int >= 0"),
        ("seed too large", ["--seed", str(2**32)], "--seed: expected an int <= 4294967295"),
        ("device tpu", ["--device", "tpu"], "--device: not a torch device: 'tpu'"),
        ("device meta", ["--device", "meta"], "--device: 'meta': only cpu and cuda"),
        ("results-dir is a file", ["--results-dir", str(tmp_path / "a_file")], "--results-dir: .* is not a directory"),
        ("results-dir below a file", ["--results-dir", str(tmp_path / "a_file" / "r")], "--results-dir: cannot write"),
        ("results rows is a file", ["--results-dir", str(tmp_path / "rows_is_a_file")],
         "--results-dir: .*rows exists and is not a directory"),
        ("weights thermometer", ["--weights", f"thermometer={weights}", *results],
         "row thermometer reads no weights in the smoke profile; rows that take weights: lid, sap, pixeldefend, "
         "defensegan, madry"),
        ("weights xie smoke", ["--weights", f"xie={weights}", *results], "row xie reads no weights in the smoke"),
        ("weights na paper", ["--profile", "paper", "--weights", f"na={weights}", "--rows", "na", *results],
         "row na reads no weights in the paper profile; rows that take weights: lid, guo, sap, xie"),
        ("weights in a dry run", ["--dry-run", "--weights", f"madry={weights}", *results],
         "--weights: a dry run uses untrained models"),
        ("weights for a row not run", ["--rows", "madry", "--weights", f"lid={weights}", *results],
         r"row lid is not among --rows \(madry\)"),
        ("weights missing file", ["--weights", f"madry={tmp_path / 'none.pt'}", *results], "no such file"),
        ("weights twice", ["--weights", f"madry={weights}", "--weights", f"madry={weights}", *results],
         "row madry given twice"),
        ("weights no path", ["--weights", "madry", *results], "--weights: expected ROW=PATH"),
        ("data-dir missing", ["--data-dir", str(tmp_path / "nowhere"), *results], "--data-dir: .* is not a directory"),
        ("paper imagenet without data", ["--profile", "paper", "--rows", "guo,madry", *results],
         "--data-dir: rows guo of the paper profile read ImageNet"),
    ]


@pytest.mark.parametrize("index", range(17))
def test_runner_rejects_bad_arguments_before_any_row_runs(tmp_path, capsys, monkeypatch, index):
    name, argv, match = _runner_cases(tmp_path)[index]
    ran = []
    monkeypatch.setattr(runner, "run_table", lambda *a, **k: ran.append(1))
    with pytest.raises(SystemExit) as info:
        runner.main(argv)
    assert info.value.code == 2, name
    import re

    err = capsys.readouterr().err
    assert re.search(match, err), (name, err)
    assert ran == [], f"{name}: a row ran before the arguments were checked"


def test_weights_for_rows_that_read_them_are_accepted(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"w")
    results = ["--results-dir", str(tmp_path / "results")]
    args = runner.parse_args(["--weights", f"madry={tmp_path / 'w.pt'}", *results])
    assert args.weights == {"madry": tmp_path / "w.pt"}
    args = runner.parse_args(["--profile", "paper", "--rows", "guo", "--data-dir", str(tmp_path),
                              "--weights", f"guo={tmp_path / 'w.pt'}", *results])
    assert args.weights == {"guo": tmp_path / "w.pt"}


class _ReadWeights(Exception):
    pass


@pytest.mark.parametrize("profile", ["smoke", "paper"])
def test_every_row_that_declares_weights_reads_them_and_no_other(tmp_path, monkeypatch, profile):
    """takes_weights and the code agree: with --weights given for a row, building its defense
    reaches the user's file exactly when the row declares it (the heavy steps are stubbed)."""
    import importlib

    from reproduce.spec import RunContext

    def classifier(ctx, fields, *, row=None):
        if row is not None and row in ctx.weights:
            raise _ReadWeights(row)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))

    def imagenet_classifier(ctx, row):
        if row in ctx.weights:
            raise _ReadWeights(row)
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10))

    def test_set(ctx, dataset, n):
        shape = (2, 3, 8, 8) if dataset == "imagenet" else (2, 1, 28, 28)
        return torch.rand(*shape), torch.zeros(2).long()

    zoo = {name: importlib.import_module(f"obfgrad.zoo.{name}")
           for name in ("common", "imagenet", "guo", "pixeldefend", "defensegan", "thermometer", "na")}
    monkeypatch.setattr(zoo["common"], "classifier", classifier)
    monkeypatch.setattr(zoo["common"], "test_set", test_set)
    monkeypatch.setattr(zoo["imagenet"], "imagenet_classifier", imagenet_classifier)
    monkeypatch.setattr(zoo["guo"], "quilt_database", lambda *a: torch.rand(50, 3, 5, 5))
    monkeypatch.setattr(zoo["pixeldefend"], "pixelcnn", lambda ctx, r: (None, None))
    monkeypatch.setattr(zoo["defensegan"], "generator", lambda ctx, r: torch.nn.Linear(1, 1))
    monkeypatch.setattr(zoo["thermometer"], "encoded_classifier", lambda ctx, config: _NoWeights())
    monkeypatch.setattr(zoo["na"], "cascade_classifier", lambda ctx, fields: _NoWeights())
    for spec in all_specs(list(ROW_NAMES), profile):
        ctx = RunContext(profile=profile, weights={spec.name: tmp_path / "w.pt"}, data_dir=tmp_path,
                         log=lambda message: None)
        try:
            spec.build_defense(spec, ctx, 2)
            read = False
        except _ReadWeights as reading:
            read = str(reading) == spec.name
        except _NoWeightsReached:
            read = False
        assert read == spec.takes_weights, (profile, spec.name)


class _NoWeightsReached(Exception):
    pass


class _NoWeights:
    """Stands for a classifier built without consulting --weights; building on it stops here."""

    def __getattr__(self, name):
        raise _NoWeightsReached(name)


def test_dry_run_reaches_every_row_in_the_smoke_profile(tmp_path, monkeypatch, capsys):
    """Case 7: the smoke dry run (the default profile, all nine rows) died at the Guo row (a
    3-channel synthetic patch database for 1-channel Fashion-MNIST); Defense-GAN's dry run ran
    the full smoke attack (3 minutes). The paper profile's: tests/test_reproduce_dry_run.py."""
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    assert runner.main(["--dry-run", "--results-dir", str(results), "--quiet"]) == 0
    table = json.loads((results / "table1.json").read_text())
    assert sorted(table["rows"]) == sorted(ROW_NAMES)
    assert all(row["n"] == 2 for row in table["rows"].values())
    stored = json.loads((results / "rows" / "defensegan.json").read_text())
    assert stored["spec"]["config"]["latent_attack"]["steps"] == 2


def test_the_dry_run_changes_no_smoke_setting():
    """The dry-run reductions touch dry runs only: every smoke row's settings are what they were."""
    smoke = {spec.name: spec.config for spec in all_specs(list(ROW_NAMES), "smoke", False)}
    assert smoke["defensegan"]["latent_attack"] == {"inversion_steps": 300, "inversion_restarts": 8,
                                                    "inversion_lr": 0.1, "steps": 200, "lr": 0.05,
                                                    "binary_search_steps": 4, "initial_const": 1.0}
    assert smoke["defensegan"]["projection"] == {"steps": 100, "restarts": 4, "lr": 10.0, "momentum": 0.7,
                                                 "lr_decay": 0.1, "lr_decay_at": 0.8}


def test_diagnose_dry_run_of_guos_quilting_in_the_smoke_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    code = cli_main(["diagnose", "--defense", "guo:quilting", "--dry-run", "--examples", "2", "--steps", "2",
                     "--random-samples", "2", "--grad-repeats", "2", "--judge-samples", "2", "--eot-samples", "2",
                     "--surrogate-steps", "2", "--quiet", "--json", str(tmp_path / "q.json")])
    assert code == 0
    assert json.loads((tmp_path / "q.json").read_text())["config"]["defense"] == "guo:quilting"


def test_a_missing_dataset_stops_the_runner_before_the_first_row(tmp_path, monkeypatch):
    from obfgrad.data import locate

    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OBFGRAD_DATA", raising=False)
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))

    def offline(*args, **kwargs):
        raise locate.DownloadError("offline")

    monkeypatch.setattr(locate, "download_file", offline)
    ran = []
    monkeypatch.setattr(runner, "run_table", lambda *a, **k: ran.append(1))
    with pytest.raises(SystemExit,
                       match="(?s)dataset .fashion-mnist. .* not found.*apt-get install dataset-fashion-mnist"):
        runner.main(["--rows", "madry,na", "--results-dir", str(tmp_path / "results")])
    assert ran == []


def test_diagnose_reports_missing_data_for_a_users_model_without_a_traceback(files, tmp_path, monkeypatch):
    from obfgrad.data import locate

    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(locate, "SYSTEM_DATA_ROOTS", (tmp_path / "system",))
    monkeypatch.setattr(locate, "download_file", lambda *a, **k: (_ for _ in ()).throw(locate.DownloadError("offline")))
    with pytest.raises(SystemExit, match="--dataset mnist: dataset 'mnist' .* not found"):
        cli_main(["diagnose", "--model", f"{tmp_path / 'mine.py'}:build", "--eps", "0.1", "--dataset", "mnist"])
