"""Dry runs of rows 6 (PixelDefend) and 7 (Defense-GAN) in the paper profile: 2 examples, 2 steps,
untrained models at paper size, synthetic data, on CPU."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import RunContext  # noqa: E402


def test_paper_profile_dry_run_of_pixeldefend_and_defensegan(tmp_path, monkeypatch):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    specs = all_specs(["pixeldefend", "defensegan"], "paper", dry_run=True)
    pixeldefend, defensegan = specs
    assert pixeldefend.config["pixelcnn"]["arch_kwargs"]["nr_filters"] == 160
    assert pixeldefend.config["pixelcnn"]["arch_kwargs"]["nr_resnet"] == 5
    assert pixeldefend.config["max_positions"] == 4  # the dry run purifies only the first pixels
    assert defensegan.config["generator"]["dim"] == 64 and defensegan.config["generator"]["arch"] == "dcgan"
    ctx = RunContext(results_dir=tmp_path / "results", dry_run=True, progress=False, log=lambda message: None)
    outcome = runner.run_table(specs, ctx)
    rows = json.loads(outcome["paths"]["json"].read_text())["rows"]
    for name in ("pixeldefend", "defensegan"):
        row = rows[name]
        assert row["n"] == 2 if "n" in row else True
        for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy"):
            assert 0.0 <= row[field] <= 1.0
    assert 0.0 <= rows["defensegan"]["perfect_projection_accuracy"] <= 1.0


def test_smoke_specs_have_the_issue_sizes():
    pixeldefend, defensegan = all_specs(["pixeldefend", "defensegan"], "smoke")
    assert pixeldefend.n_examples >= 50 and defensegan.n_examples >= 100
    assert pixeldefend.config["eps_defend"] == 2 * pixeldefend.eps
    assert defensegan.distance == "l2_per_value" and defensegan.eps == 0.005
