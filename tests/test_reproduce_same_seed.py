"""Rerunning a row with the same seed on the same machine reproduces every number; another seed
changes the attack's records. The SAP row (its attack draws SAP's random masks) on the real
Fashion-MNIST, smoke profile, 8 examples, with a small classifier trained once in this module's
own cache. Also: every row result file records its environment (versions, extension build,
backend, device, seed, git revision)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import runner  # noqa: E402

ROW = "sap"
# Keys that measure time or name the results directory, not results.
VOLATILE = {"wall_seconds", "seconds", "build_seconds", "wall_time_s", "date",
            "records_sha256", "detector_records_sha256"}  # checksums of files that hold wall times

pytestmark = pytest.mark.fashion_mnist


def _stable(value):
    """``value`` without timings and without results-directory paths (the summary's ``records``
    path; the records *file* keeps its per-example list)."""
    if isinstance(value, dict):
        return {key: _stable(item) for key, item in value.items()
                if key not in VOLATILE and not (key == "records" and isinstance(item, str))}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


@pytest.fixture(scope="module")
def run_sap(tmp_path_factory):
    """``run_sap(seed, name)`` runs the row into its own results directory (once per name) and
    returns the row file and the per-attack records files; the classifier is trained on the first
    call only."""
    cache = tmp_path_factory.mktemp("cache")
    done = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OBFGRAD_CACHE", str(cache))
        patch.setenv("OBFGRAD_SMOKE_TRAIN_LIMIT", "1000")

        def run(seed: int, name: str):
            if name in done:
                return done[name]
            results = tmp_path_factory.mktemp(name)
            argv = ["--rows", ROW, "--limit", "8", "--seed", str(seed), "--results-dir", str(results),
                    "--no-resume", "--quiet"]
            assert runner.main(argv) == 0
            row_file = json.loads((results / "rows" / f"{ROW}.json").read_text())
            records = {path.name: json.loads(path.read_text())
                       for path in sorted((results / "records").glob(f"{ROW}.*.json"))}
            done[name] = (row_file, records)
            return done[name]

        yield run


def test_same_seed_reproduces_every_number_and_another_seed_changes_the_attack(run_sap):
    first_row, first_records = run_sap(0, "seed0-a")
    second_row, second_records = run_sap(0, "seed0-b")
    assert first_records, "the row wrote no per-attack records"
    assert _stable(first_row["result"]) == _stable(second_row["result"])
    assert _stable(first_records) == _stable(second_records)
    assert _stable(first_row["environment"]) == _stable(second_row["environment"])

    # Another seed draws other SAP masks (in the attacks and in the single-draw predictions): the
    # per-example records change, while the deterministic undefended classifier does not.
    other_row, other_records = run_sap(1, "seed1")
    assert other_row["result"]["undefended_clean_accuracy"] == first_row["result"]["undefended_clean_accuracy"]
    assert set(other_records) == set(first_records)
    assert _stable(other_records) != _stable(first_records), "seed 1 gave the same records as seed 0"


def test_row_result_file_records_its_environment(run_sap):
    row_file, _ = run_sap(0, "seed0-a")
    environment = row_file["environment"]
    assert environment["seed"] == 0 and environment["profile"] == "smoke" and environment["device"] == "cpu"
    for key in ("obfgrad", "git_revision", "python", "torch", "numpy", "backend", "hardware", "torch_threads"):
        assert environment[key], key
    extension = environment["extension"]
    if extension["native"]:
        assert len(extension["sha256"]) == 64 and extension["build"]["compiler"]
        assert extension["flavour"]
    else:
        assert extension["error"]
