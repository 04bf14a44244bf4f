"""tools/gpu_check.py, the offline GPU check: its CPU-only dry mode end to end (what CI can run),
its time limit, and its reading of pytest's and pytest-benchmark's reports."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.mark.slow
def test_dry_mode_runs_every_stage_and_skips_the_gpu_parts_with_a_reason(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OBFGRAD_CACHE=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--dry", "--time-limit", "900"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry" and summary["ok"] and summary["dry_reason"] == "--dry given"
    status = {stage["name"]: stage for stage in summary["stages"]}
    assert list(status) == ["build", "environment", "nvrtc", "cuda_tests", "benchmarks", "estimate", "dry_run"]
    assert status["build"]["status"] == status["environment"]["status"] == "passed"
    assert summary["environment"]["backend"]["cpu"]["native"] is True  # the in-place build loaded
    # NVRTC compiles every driver where CuPy is installed, else says why not.
    assert status["nvrtc"]["status"] == "passed" or "NVRTC is not available" in status["nvrtc"]["reason"]
    # The GPU tests and benchmarks were collected (a broken selection would fail) and all skipped.
    for name in ("cuda_tests", "benchmarks"):
        assert status[name]["status"] == "skipped" and "skipped" in status[name]["reason"], status[name]
        assert status[name]["details"]["tests"] > 0 and status[name]["details"]["failed"] == []
    assert status["cuda_tests"]["details"]["tests"] >= 50  # every op's CUDA tests carry the gpu mark
    for name in ("estimate", "dry_run"):  # CPU stand-ins: one cheap row proves the plumbing
        assert status[name]["status"] == "passed" and status[name]["device"] == "cpu (stand-in)"
    assert status["dry_run"]["details"]["rows"]["lid"]["n"] == 2
    assert status["estimate"]["details"]["seconds_per_item"]["lid_cnn"] > 0
    assert {"summary.json", "gpu_check.log", "cuda-tests.xml", "estimate.json"} <= {p.name for p in out.iterdir()}
    assert "mode dry (--dry given)" in run.stdout and "OK" in run.stdout


def test_a_stage_past_the_time_limit_is_stopped_and_the_next_skipped(gpu_check, tmp_path, monkeypatch):
    def sleeper(check, stage):
        code = check.run(stage, [sys.executable, "-c", "import time; time.sleep(120)"])
        stage.status = "passed" if code == 0 else stage.status

    monkeypatch.setattr(gpu_check, "STAGES", [("build", sleeper), ("environment", sleeper)])
    monkeypatch.setattr(gpu_check, "BUDGETS", {"build": (100, 1), "environment": (100, 1)})
    started = time.monotonic()
    check = gpu_check.Check(tmp_path, time_limit=8.0, dry_reason="test", python=sys.executable)
    gpu_check.run_stages(check)
    assert time.monotonic() - started < 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    build, environment = summary["stages"]
    assert build["status"] == "timed_out" and "stopped after" in build["reason"]
    assert environment["status"] == "skipped" and environment["reason"].startswith("time limit: 0 s left")
    assert summary["ok"] is False and summary["failed_stages"] == ["build"]
    assert summary["native_required"] is False and "without _C" in build["reason"]


def test_benchmark_rows_and_table_compare_each_contender_with_obfgrad(gpu_check, tmp_path):
    report = {"benchmarks": [
        {"group": "gpu knn", "params": {"contender": "obfgrad"}, "extra_info": {"cuda_ms_median": 200.0}},
        {"group": "gpu knn", "params": {"contender": "cdist_topk"},
         "extra_info": {"cuda_ms_median": 100.0, "queries_with_exact_neighbours": 0.9, "cuda_ms": [1, 2]}},
        {"group": "gpu quilt", "params": {"images": 8}, "extra_info": {"cuda_ms_median": 80.0, "ms_per_image": 10.0}},
    ]}
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(report))
    rows = gpu_check.benchmark_rows(path)
    assert [row["contender"] for row in rows] == ["obfgrad", "cdist_topk", "obfgrad (8 images)"]
    assert rows[1]["extra"] == {"queries_with_exact_neighbours": 0.9}
    summary = {"mode": "gpu", "dry_reason": None, "elapsed_s": 1.0, "ok": True, "failed_stages": [],
               "environment": {}, "stages": [{"name": "benchmarks", "status": "passed", "seconds": 1.0,
                                              "device": "cuda", "reason": "", "details": {"benchmarks": rows}}]}
    table = gpu_check.format_table(summary)
    assert "cdist_topk" in table and "0.50x" in table


def test_bad_arguments_are_refused(gpu_check, capsys):
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--out", "x", "--time-limit", "2"])
    assert "--time-limit" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])


@pytest.mark.parametrize("name, argv, message", [
    ("time limit nan", lambda t: ["--out", str(t / "out"), "--time-limit", "nan"], "--time-limit: expected a finite"),
    ("time limit inf", lambda t: ["--out", str(t / "out"), "--time-limit", "inf"], "--time-limit: expected a finite"),
    ("out is a file", lambda t: ["--out", str(t / "a_file")], "--out: .*a_file exists and is not a directory"),
    ("out under a file", lambda t: ["--out", str(t / "a_file" / "out")], "--out: cannot write in"),
    ("python missing", lambda t: ["--out", str(t / "out"), "--python", str(t / "no-python")],
     "--python: .*no-python' is not an executable"),
])
def test_bad_arguments_are_refused_before_any_stage(gpu_check, tmp_path, capsys, name, argv, message):
    """A NaN time limit once lifted the limit silently; a bad --out or --python failed with a
    traceback, or in every stage, instead of at once."""
    import re

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(SystemExit) as raised:
        gpu_check.parse_args(argv(tmp_path))
    assert raised.value.code == 2
    assert re.search(message, capsys.readouterr().err), name
