"""A cached row result is reused only when the code, data and settings that made it still match and
its content is well formed; anything else is recomputed with a warning, never reused, never a
crash (issues 14 and 15: fault injection into the runner's row files and per-example records)."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from obfgrad import fingerprint  # noqa: E402
from obfgrad.attacks import PGD  # noqa: E402
from reproduce import pipeline, provenance, runner  # noqa: E402
from reproduce.spec import RowSpec, RunContext  # noqa: E402


def _toy_row(calls):
    """A real (tiny) row: a fixed linear classifier on 20 random 2x2 images, attacked by PGD through
    the pipeline, so per-example records are written as for every Table 1 row."""
    def run(spec, ctx):
        calls.append(spec.name)
        generator = torch.Generator().manual_seed(0)
        x = torch.rand(20, 1, 2, 2, generator=generator)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [-1.0, -1.0, -1.0, -1.0]]))
            model[1].bias.copy_(torch.tensor([-2.0, 2.0]))  # class 0 iff the pixels sum above 2
        y = model(x).argmax(1)
        weak = pipeline.run_attack(ctx, spec, "own", model, PGD("linf", 0.01, steps=2, step_size=0.005), x, y)
        strong = pipeline.run_attack(ctx, spec, "adaptive", model, PGD("linf", 1.0, steps=10, step_size=0.5), x, y)
        return {"clean_accuracy": weak["clean_accuracy"], "own_attack_accuracy": weak["accuracy"],
                "own_attack_ci95": weak["ci95"], "adaptive_accuracy": strong["accuracy"],
                "adaptive_ci95": strong["ci95"], "attacks": {"own": weak, "adaptive": strong}}

    return RowSpec(name="madry", defense="toy", dataset="toy", distance="linf", eps=1.0, paper_dataset="CIFAR-10",
                   paper_bound="0.031 (ℓ∞)", paper_accuracy=0.47, n_examples=20, config={"toy": 1}, run=run)


@pytest.fixture
def ctx(tmp_path):
    return RunContext(results_dir=tmp_path / "results", progress=False, log=lambda message: None)


def _row_file(ctx):
    return ctx.results_dir / "rows" / "madry.json"


def _run(ctx, calls):
    return runner.run_table([_toy_row(calls)], ctx)["results"]["madry"]


def test_an_intact_cached_result_is_reused_silently(ctx, recwarn):
    calls = []
    first = _run(ctx, calls)
    second = _run(ctx, calls)
    assert calls == ["madry"] and second == first
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    assert first["provenance"]["code"] == provenance.code_fingerprint()


@pytest.mark.parametrize("changed", ["obfgrad/attacks/pgd.py", "reproduce/pipeline.py", "native"])
def test_a_change_to_the_code_that_computes_a_row_recomputes_it(ctx, monkeypatch, changed):
    calls = []
    _run(ctx, calls)
    real = fingerprint.file_sha256
    if changed == "native":
        monkeypatch.setattr(fingerprint, "native_digest", lambda: "another build of _C")
    else:
        # obfgrad may be installed (CI: pip install .): edit the file the fingerprint reads.
        package_file = changed.startswith("obfgrad/")
        base = fingerprint.PACKAGE_DIR.parent if package_file else ROOT
        target = (base / changed).resolve()
        assert target.is_file(), target
        monkeypatch.setattr(fingerprint, "file_sha256",
                            lambda path: "edited" if Path(path).resolve() == target else real(path))
    _run(ctx, calls)
    assert calls == ["madry", "madry"]


def test_a_weights_file_is_part_of_the_key(ctx, tmp_path):
    calls = []
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"first")
    ctx.weights = {"madry": weights}
    _run(ctx, calls)
    weights.write_bytes(b"second")
    _run(ctx, calls)
    assert calls == ["madry", "madry"]


def _edit(kind, path, ctx):
    stored = json.loads(path.read_text())
    result = stored["result"]
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
        return
    if kind == "bit_flip":  # one bit of a digit of the adaptive accuracy, nothing else touched
        text = path.read_text()
        at = text.index('"adaptive_accuracy": ') + len('"adaptive_accuracy": ')
        path.write_text(text[:at] + chr(ord(text[at]) ^ 0x01) + text[at + 1:])
        return
    if kind == "empty_list":
        stored = []
    elif kind == "null":
        stored = None
    elif kind == "result_null":
        stored["result"] = None
    elif kind == "missing_key":
        del result["adaptive_ci95"]
        stored["checksum"] = provenance.result_checksum(result)
    elif kind == "wrong_type":
        result["n"] = "20"
        stored["checksum"] = provenance.result_checksum(result)
    elif kind == "wrong_shape":
        result["adaptive_ci95"] = [0.1]
        stored["checksum"] = provenance.result_checksum(result)
    elif kind == "edited_value":  # the published 98.7%: the checksum left as it was
        result["adaptive_accuracy"] = 0.987
    elif kind == "outside_ci":  # the same edit with a matching checksum: outside its own interval
        result["adaptive_accuracy"] = 0.95
        stored["checksum"] = provenance.result_checksum(result)
    elif kind == "records_disagree":  # the per-example records say otherwise
        records_path = Path(result["attacks"]["adaptive"]["records"])
        records = json.loads(records_path.read_text())
        for record in records["records"]:
            record["adv_correct"] = True
        records_path.write_text(json.dumps(records))
        return
    elif kind == "records_missing":
        Path(result["attacks"]["adaptive"]["records"]).unlink()
        return
    else:
        raise AssertionError(kind)
    path.write_text(json.dumps(stored))


FAULTS = ["truncated", "bit_flip", "empty_list", "null", "result_null", "missing_key", "wrong_type", "wrong_shape",
          "edited_value", "outside_ci", "records_disagree", "records_missing"]


@pytest.mark.parametrize("kind", FAULTS)
def test_a_malformed_or_damaged_cached_result_is_recomputed_with_a_warning(ctx, kind):
    calls = []
    first = _run(ctx, calls)
    _edit(kind, _row_file(ctx), ctx)
    with pytest.warns(RuntimeWarning, match="cached result refused"):
        again = _run(ctx, calls)
    assert calls == ["madry", "madry"]
    for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy", "adaptive_ci95", "n"):
        assert again[field] == first[field]
    assert json.loads((ctx.results_dir / "table1.json").read_text())["rows"]["madry"]["adaptive_accuracy"] \
        == first["adaptive_accuracy"]
    _run(ctx, calls)  # the recomputed file is intact and reused
    assert calls == ["madry", "madry"]


def test_result_problems_name_what_is_wrong(ctx):
    calls = []
    _run(ctx, calls)
    stored = json.loads(_row_file(ctx).read_text())
    assert provenance.result_problems(stored, ctx.results_dir) == []
    stored["result"]["adaptive_accuracy"] = 0.95
    stored["checksum"] = provenance.result_checksum(stored["result"])
    (problem,) = provenance.result_problems(stored, ctx.results_dir)
    assert "adaptive_accuracy" in problem and "outside its own interval" in problem
