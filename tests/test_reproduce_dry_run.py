"""``python -m reproduce --profile paper --dry-run`` over all nine rows in one runner call, as
CI runs it: 2 examples, 2 steps, untrained models at paper resolution, synthetic data, CPU.
Checks that the table files exist and every row has a result with the documented fields."""

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import runner  # noqa: E402
from reproduce.rows import all_specs  # noqa: E402
from reproduce.spec import ROW_NAMES  # noqa: E402


def test_paper_profile_dry_run_of_all_nine_rows_through_the_runner(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OBFGRAD_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    assert runner.main(["--profile", "paper", "--dry-run", "--results-dir", str(results), "--quiet"]) == 0

    paths = {suffix: results / f"table1.{suffix}" for suffix in ("md", "json", "csv")}
    assert all(path.is_file() for path in paths.values()), paths
    table = json.loads(paths["json"].read_text())
    assert table["profile"] == "paper" and "pending" not in table  # every row has code: none is listed as pending
    assert list(table["rows"]) == list(ROW_NAMES)
    for name, row in table["rows"].items():
        assert row["n"] == 2, name
        for field in ("clean_accuracy", "own_attack_accuracy", "adaptive_accuracy"):
            assert 0.0 <= row[field] <= 1.0, (name, field, row[field])
        low, high = row["adaptive_ci95"]
        assert low <= row["adaptive_accuracy"] <= high, name
        # Every row checks its classifier before attacking; untrained dry-run models skip it, saying so.
        assert row["clean_accuracy_guard"]["status"] == "skipped: dry run (untrained models)", name
        assert 0.0 < row["clean_accuracy_guard"]["floor"] < 1.0, name
        stored = json.loads((results / "rows" / f"{name}.json").read_text())
        assert stored["spec"]["config"] == json.loads(json.dumps(all_specs([name], "paper", True)[0].config))
        assert stored["environment"]["profile"] == "paper" and "extension" in stored["environment"]
    with paths["csv"].open() as handle:
        assert [line["row"] for line in csv.DictReader(handle)] == list(ROW_NAMES)
    markdown = paths["md"].read_text()
    for spec in all_specs(list(ROW_NAMES), "paper"):
        assert spec.defense.split(",")[0] in markdown
    assert "table1.md" in capsys.readouterr().out
