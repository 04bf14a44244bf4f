"""`python -m reproduce` end to end on the real Fashion-MNIST (the Debian package
dataset-fashion-mnist, which CI installs): all nine rows with capped training sets
(``OBFGRAD_SMOKE_TRAIN_LIMIT``) and a few examples, so the whole pipeline (data, training of
every model, every defense and attack, tables, curves, figures) runs in a few minutes. Skipped
with a reason where the dataset is absent."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import runner  # noqa: E402
from reproduce.spec import ROW_NAMES  # noqa: E402


@pytest.fixture
def one_thread():
    """Tiny batches gain nothing from a second thread, and on a busy machine OpenMP's barriers
    between the thousands of tiny ops (PixelDefend purifies pixel by pixel) cost far more."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.slow
@pytest.mark.fashion_mnist
def test_reproduce_all_nine_rows_end_to_end_on_fashion_mnist(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OBFGRAD_SMOKE_TRAIN_LIMIT", "100")  # also the LID detector's CW-L2 examples
    results = tmp_path / "results"
    assert runner.main(["--limit", "3", "--results-dir", str(results), "--quiet"]) == 0
    table = json.loads((results / "table1.json").read_text())
    assert list(table["rows"]) == list(ROW_NAMES)
    for name, row in table["rows"].items():
        assert row["n"] == 3, name
        assert 0.0 <= row["adaptive_accuracy"] <= 1.0 and 0.0 <= row["clean_accuracy"] <= 1.0, name
        assert row["adaptive_ci95"][0] <= row["adaptive_accuracy"] <= row["adaptive_ci95"][1], name
        assert len(row["eps_curve"]["accuracy"]) == len(row["eps_curve"]["eps"]) > 1, name
    assert "natural_twin" in table["rows"]["madry"]
    assert set(table["rows"]["guo"]["transforms"]) == {"bit_depth", "jpeg", "crop_rescale", "tv", "quilting"}
    for figure in ("own_vs_adaptive.png", "eps_curves.png"):
        assert (results / "figures" / figure).stat().st_size > 0
    out = capsys.readouterr().out
    assert "Madry et al." in out and "Defense-GAN" in out
    # A second run reuses every row (and every model) instead of recomputing.
    assert runner.main(["--rows", "madry,na", "--limit", "3", "--results-dir", str(results), "--quiet"]) == 0
    assert capsys.readouterr().out.count("cached result reused") == 2
