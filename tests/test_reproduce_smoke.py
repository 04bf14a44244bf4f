"""`python -m reproduce` end to end on the real Fashion-MNIST (the Debian package
dataset-fashion-mnist, which CI installs): the Madry and Na rows with a capped training set
and a few examples, so the whole pipeline (data, training, cascade, attacks, tables) runs in a
minute or two. Skipped with a reason where the dataset is absent."""

import json
import sys
from pathlib import Path

import pytest

from obfgrad.data import DatasetNotFoundError, load_dataset

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import runner  # noqa: E402


def _fashion_mnist_present() -> bool:
    try:
        load_dataset("fashion-mnist", "test", download=False)
    except DatasetNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _fashion_mnist_present(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_reproduce_madry_and_na_end_to_end_on_fashion_mnist(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OBFGRAD_SMOKE_TRAIN_LIMIT", "1500")
    results = tmp_path / "results"
    assert runner.main(["--rows", "na,madry", "--limit", "12", "--results-dir", str(results), "--quiet"]) == 0
    table = json.loads((results / "table1.json").read_text())
    assert set(table["rows"]) == {"madry", "na"}
    for row in table["rows"].values():
        assert row["n"] == 12
        assert 0.0 <= row["adaptive_accuracy"] <= row["clean_accuracy"] <= 1.0
        assert row["adaptive_ci95"][0] <= row["adaptive_accuracy"] <= row["adaptive_ci95"][1]
    assert "natural_twin" in table["rows"]["madry"]
    assert "Madry et al." in capsys.readouterr().out
    # A second run reuses both rows (and every model) instead of recomputing.
    assert runner.main(["--rows", "madry,na", "--limit", "12", "--results-dir", str(results), "--quiet"]) == 0
    assert capsys.readouterr().out.count("cached result reused") == 2
