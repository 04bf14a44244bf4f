#!/usr/bin/env python3
"""One offline check of obfgrad's CUDA half, for a GPU machine with no network.

    python tools/gpu_check.py --out DIR [--time-limit SECONDS] [--dry]

Uses only what is installed (torch, CuPy for CUDA 12 or 13, pytest, pytest-benchmark, pybind11;
torchvision and scikit-image for some benchmarks) and runs, from the repository root:

  build        ``python setup.py build_ext --inplace`` (the native core, in place)
  environment  Python, torch and its CUDA, the GPU, CuPy, NVRTC, obfgrad's backend_info()
  nvrtc        every csrc/cuda/*.cu compiled by NVRTC for the GPU's architecture
  cuda_tests   ``pytest -m gpu tests``: every op on CUDA tensors equals the CPU driver bit for bit
  benchmarks   ``pytest benchmarks/bench_gpu.py``: each op vs the best GPU alternative (CUDA events)
  estimate     ``python -m reproduce.estimate --device cuda --batch 32`` (all rows)
  dry_run      ``python -m reproduce --profile paper --dry-run --device cuda`` (all nine rows)

Into DIR it writes ``summary.json`` (rewritten after every stage, so a cut-off run still leaves
one), ``gpu_check.log`` (every command and its whole output), ``cuda-tests.xml`` (JUnit),
``benchmarks.json`` (pytest-benchmark) and ``estimate.json``; it prints a short table at the end.
Each stage runs as its own process group under a share of ``--time-limit`` (default 470 s):
a stage that would not fit is skipped with that reason, one that overruns is stopped, and the
summary is written either way. Exit status 0 when no stage failed or timed out. If the build
fails the check goes on without ``_C`` (the CUDA drivers need only NVRTC; the CPU side of each
comparison is then the pure-torch reference), so one run still proves the GPU half.

Without a CUDA device (or with ``--dry``) the check runs in a CPU-only dry mode: the build and
the environment stages run as above, the GPU tests and benchmarks are collected and reported as
skipped with torch's reason, NVRTC compiles for sm_80 and sm_90 when CuPy is installed, and the
estimate and the dry run each run one cheap row on the CPU to prove the stage's plumbing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TIME_LIMIT = 470.0
RESERVE_SECONDS = 5.0  # kept back for the final summary

#: (most seconds a stage may take, fewest it needs to be worth starting)
BUDGETS = {"build": (240, 30), "environment": (60, 10), "nvrtc": (90, 10), "cuda_tests": (180, 30),
           "benchmarks": (180, 30), "estimate": (150, 30), "dry_run": (240, 40)}


@dataclass
class Stage:
    name: str
    status: str = "pending"  # passed | failed | skipped | timed_out | interrupted
    seconds: float = 0.0
    reason: str = ""
    device: str = ""
    command: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


class Interrupted(Exception):
    """SIGTERM or SIGINT reached the check: stop the running stage and write the summary."""


class Check:
    """The run's state: output directory, clock, log, stages so far, and the summary file."""

    def __init__(self, out: Path, time_limit: float, dry_reason: Optional[str], python: str):
        self.out, self.time_limit, self.python = out, time_limit, python
        self.dry_reason = dry_reason
        self.start = time.monotonic()
        self.stages: list[Stage] = []
        self.environment: dict = {}
        self.scratch = Path(tempfile.mkdtemp(prefix="obfgrad-gpu-check-"))
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text(f"obfgrad GPU check, {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        self.child: Optional[subprocess.Popen] = None
        self.require_native = True  # until the build fails

    @property
    def dry(self) -> bool:
        return self.dry_reason is not None

    def remaining(self) -> float:
        return self.time_limit - (time.monotonic() - self.start) - RESERVE_SECONDS

    def env(self) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OBFGRAD_REQUIRE_NATIVE="1" if self.require_native else "0")
        env.setdefault("OBFGRAD_CACHE", str(self.scratch / "cache"))
        return env

    def log(self, text: str) -> None:
        with self.log_path.open("a") as handle:
            handle.write(text)

    def run(self, stage: Stage, argv: list[str]) -> Optional[int]:
        """Run ``argv`` from the repository root, output appended to the log, under the stage's
        budget; returns the exit code, or None when it was stopped (status set)."""
        most, _ = BUDGETS[stage.name]
        timeout = max(1.0, min(most, self.remaining()))
        stage.command = argv
        self.log(f"\n===== {stage.name}: {' '.join(argv)} (limit {timeout:.0f} s)\n")
        with self.log_path.open("a") as handle:
            self.child = subprocess.Popen(argv, cwd=ROOT, env=self.env(), stdout=handle, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                return self.child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                stage.status, stage.reason = "timed_out", f"stopped after {timeout:.0f} s"
                return None
            finally:
                stop_process_group(self.child)
                self.child = None

    def summary(self) -> dict:
        failed = [s.name for s in self.stages if s.status in ("failed", "timed_out", "interrupted")]
        return {"mode": "dry" if self.dry else "gpu", "dry_reason": self.dry_reason, "ok": not failed,
                "failed_stages": failed, "native_required": self.require_native, "time_limit_s": self.time_limit,
                "elapsed_s": round(time.monotonic() - self.start, 1), "environment": self.environment,
                "stages": [asdict(s) for s in self.stages]}

    def write_summary(self) -> None:
        path = self.out / "summary.json"
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(self.summary(), indent=2, default=str) + "\n")
        partial.replace(path)


def stop_process_group(process: subprocess.Popen) -> None:
    """End a stage's process and everything it started (its own session)."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def log_tail(check: Check, characters: int = 1500) -> str:
    text = check.log_path.read_text(errors="replace")
    return text[-characters:]


# ----------------------------------------------------------------------------- stages


def stage_build(check: Check, stage: Stage) -> None:
    jobs = str(max(1, os.cpu_count() or 1))
    code = check.run(stage, [check.python, "setup.py", "-q", "build_ext", "--inplace", "-j", jobs])
    if code is not None:
        stage.status = "passed" if code == 0 else "failed"
        stage.reason = "" if code == 0 else f"exit status {code}"


_ENVIRONMENT_PROBE = r"""
import json, platform, sys, torch
from obfgrad import _native
info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "backend": _native.backend_info()}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info["gpu"] = {"name": props.name, "capability": f"sm_{props.major}{props.minor}",
                   "memory_gib": round(props.total_memory / 2**30, 1),
                   "multiprocessors": props.multi_processor_count}
for module in ("cupy", "torchvision", "pytest_benchmark", "skimage"):
    try:
        info[module] = __import__(module).__version__
    except Exception as exc:
        info[module] = f"not available ({type(exc).__name__})"
print("GPU_CHECK_JSON " + json.dumps(info, default=str))
"""


def _json_line(check: Check, marker: str) -> Optional[dict]:
    for line in reversed(check.log_path.read_text(errors="replace").splitlines()):
        if line.startswith(marker + " "):
            return json.loads(line[len(marker) + 1:])
    return None


def stage_environment(check: Check, stage: Stage) -> None:
    code = check.run(stage, [check.python, "-c", _ENVIRONMENT_PROBE])
    if code is None:
        return
    info = _json_line(check, "GPU_CHECK_JSON") if code == 0 else None
    if info is None:
        stage.status, stage.reason = "failed", f"the probe failed (exit status {code})"
        return
    info["nvcc"] = shutil.which("nvcc")
    check.environment.update(info)
    stage.status = "passed"


_NVRTC_PROBE = r"""
import json, sys
from pathlib import Path
from obfgrad._native import compile_cuda_source, kernel_source_dir
ops = sorted(p.stem for p in (kernel_source_dir() / "cuda").glob("*.cu"))
sizes = {f"{op}@{arch}": len(compile_cuda_source(op, arch)) for op in ops for arch in sys.argv[1:]}
print("GPU_CHECK_JSON " + json.dumps(sizes))
"""


def stage_nvrtc(check: Check, stage: Stage) -> None:
    backend = check.environment.get("backend", {}).get("cuda", {})
    if not backend.get("nvrtc"):
        stage.status = "skipped" if check.dry else "failed"
        stage.reason = f"NVRTC is not available: {backend.get('nvrtc_error', 'CuPy is not installed')}"
        return
    archs = ["sm_80", "sm_90"] if check.dry else [check.environment["gpu"]["capability"]]
    stage.device = "none (compile only)"
    code = check.run(stage, [check.python, "-c", _NVRTC_PROBE, *archs])
    if code is None:
        return
    sizes = _json_line(check, "GPU_CHECK_JSON") if code == 0 else None
    stage.status = "passed" if sizes else "failed"
    stage.details = {"cubin_bytes": sizes} if sizes else {}
    stage.reason = "" if sizes else f"exit status {code}: {log_tail(check, 600)}"


def junit_counts(path: Path) -> dict:
    """Totals and the names of failed tests (and up to five skip reasons) of a JUnit file."""
    root = ElementTree.parse(path).getroot()
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, reasons = [], []
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failures" if case.find("failure") is not None else "errors"] += 1
            failed.append(name)
        skipped = case.find("skipped")
        if skipped is not None:
            counts["skipped"] += 1
            if len(reasons) < 5 and skipped.get("message") not in reasons:
                reasons.append(skipped.get("message"))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed, "skip_reasons": reasons}


def _pytest_stage(check: Check, stage: Stage, args: list[str], junit: Path) -> None:
    code = check.run(stage, [check.python, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs",
                             f"--junitxml={junit}", *args])
    if code is None:
        return
    if not junit.is_file():
        stage.status, stage.reason = "failed", f"pytest exit status {code}, no JUnit report"
        return
    counts = junit_counts(junit)
    stage.details.update(counts)
    if code == 0 and counts["tests"] and counts["skipped"] == counts["tests"]:
        stage.status = "skipped"
        stage.reason = "every test skipped: " + "; ".join(r for r in counts["skip_reasons"] if r)
    elif code == 0 and counts["tests"]:
        stage.status = "passed"
    else:
        stage.status = "failed"
        stage.reason = f"pytest exit status {code}: {counts['failures']} failed, {counts['errors']} errors"


def stage_cuda_tests(check: Check, stage: Stage) -> None:
    stage.device = "cpu (tests skip)" if check.dry else "cuda"
    _pytest_stage(check, stage, ["-m", "gpu", "tests"], check.out / "cuda-tests.xml")


def benchmark_rows(path: Path) -> list[dict]:
    """One row per benchmark of a pytest-benchmark JSON file: group, contender, CUDA-event median."""
    rows = []
    for bench in json.loads(path.read_text()).get("benchmarks", []):
        params = bench.get("params") or {}
        extra = dict(bench.get("extra_info") or {})
        extra.pop("cuda_ms", None)
        contender = params.get("contender", "obfgrad")
        if "images" in params:
            contender += f" ({params['images']} image{'s' if params['images'] > 1 else ''})"
        rows.append({"group": bench.get("group"), "contender": contender,
                     "cuda_ms_median": extra.pop("cuda_ms_median", None), "extra": extra})
    return rows


def stage_benchmarks(check: Check, stage: Stage) -> None:
    stage.device = "cpu (benchmarks skip)" if check.dry else "cuda"
    result = check.out / "benchmarks.json"
    _pytest_stage(check, stage, ["benchmarks/bench_gpu.py", "-o", "python_files=bench_*.py",
                                 f"--benchmark-json={result}", "--benchmark-columns=median,rounds"],
                  check.scratch / "benchmarks.xml")
    if result.is_file():
        stage.details["benchmarks"] = benchmark_rows(result)


#: The CPU stand-ins of the dry mode: one cheap row proves the stage's plumbing.
DRY_ROW = "lid"
GPU_BATCH = 32


def stage_estimate(check: Check, stage: Stage) -> None:
    result = check.out / "estimate.json"
    if check.dry:
        stage.device = "cpu (stand-in)"
        args = ["--rows", DRY_ROW, "--device", "cpu", "--batch", "1", "--repeats", "1"]
    else:
        stage.device = "cuda"
        args = ["--device", "cuda", "--batch", str(GPU_BATCH), "--repeats", "3"]
    code = check.run(stage, [check.python, "-m", "reproduce.estimate", *args, "--json", str(result)])
    if code is None:
        return
    if code != 0 or not result.is_file():
        stage.status, stage.reason = "failed", f"exit status {code}"
        return
    report = json.loads(result.read_text())
    stage.details = {"batch": report["batch"],
                     "seconds_per_item": {k: v["seconds_per_item"] for k, v in report["units"].items()},
                     "attack_hours": {k: v.get("attack_hours") for k, v in report["rows"].items()}}
    stage.status = "passed"
    if check.dry:
        stage.reason = f"{check.dry_reason}: row {DRY_ROW} on the CPU instead"


def stage_dry_run(check: Check, stage: Stage) -> None:
    results = check.scratch / "dry-run"
    if check.dry:
        stage.device = "cpu (stand-in)"
        args = ["--rows", DRY_ROW, "--device", "cpu"]
    else:
        stage.device = "cuda"
        args = ["--device", "cuda"]
    code = check.run(stage, [check.python, "-m", "reproduce", "--profile", "paper", "--dry-run", *args,
                             "--results-dir", str(results), "--quiet"])
    if code is None:
        return
    table = results / "table1.json"
    if code != 0 or not table.is_file():
        stage.status, stage.reason = "failed", f"exit status {code}"
        return
    rows = json.loads(table.read_text())["rows"]
    stage.details = {"rows": {name: {"n": row.get("n"), "wall_seconds": row.get("wall_seconds"),
                                     "adaptive_accuracy": row.get("adaptive_accuracy")}
                              for name, row in rows.items()}}
    # reproduce fails (exit status != 0) when a row does; a table without the rows asked for is one too
    missing = not rows or (check.dry and DRY_ROW not in rows)
    stage.status = "failed" if missing else "passed"
    stage.reason = f"table1.json has rows {sorted(rows)} only" if missing else ""
    if check.dry and not missing:
        stage.reason = f"{check.dry_reason}: row {DRY_ROW} on the CPU instead"


STAGES: list[tuple[str, Callable[[Check, Stage], None]]] = [
    ("build", stage_build), ("environment", stage_environment), ("nvrtc", stage_nvrtc),
    ("cuda_tests", stage_cuda_tests), ("benchmarks", stage_benchmarks), ("estimate", stage_estimate),
    ("dry_run", stage_dry_run),
]


# ----------------------------------------------------------------------------- driver


def run_stages(check: Check) -> None:
    for name, body in STAGES:
        stage = Stage(name)
        check.stages.append(stage)
        _, fewest = BUDGETS[name]
        started = time.monotonic()
        print(f"[gpu_check] {name} ...", flush=True)
        if check.remaining() < fewest:
            stage.status = "skipped"
            stage.reason = f"time limit: {max(check.remaining(), 0):.0f} s left, the stage needs about {fewest} s"
        else:
            try:
                body(check, stage)
            except Interrupted:
                stage.status, stage.reason = "interrupted", "the check received a stop signal"
                raise
            except Exception as exc:  # a stage's own parsing failed: record it, go on
                stage.status, stage.reason = "failed", f"{type(exc).__name__}: {exc}"
            finally:
                stage.seconds = round(time.monotonic() - started, 1)
                check.write_summary()
        if name == "build" and stage.status != "passed":
            # The GPU half needs no _C (NVRTC compiles the drivers): go on, the CPU side of every
            # comparison then being the pure-torch references (bit-identical to _C in CI).
            check.require_native = False
            stage.reason += "; later stages run without _C (OBFGRAD_REQUIRE_NATIVE=0)"
        print(f"[gpu_check] {name}: {stage.status} ({stage.seconds:.0f} s) {stage.reason[:200]}", flush=True)
        check.write_summary()


def format_table(summary: dict) -> str:
    lines = [f"obfgrad GPU check: mode {summary['mode']}"
             + (f" ({summary['dry_reason']})" if summary["dry_reason"] else "")
             + f", {summary['elapsed_s']:.0f} s, "
             + ("OK" if summary["ok"] else "FAILED: " + ", ".join(summary["failed_stages"]))]
    env = summary["environment"]
    if env:
        gpu = env.get("gpu", {}).get("name", "no GPU")
        nvrtc = env.get("backend", {}).get("cuda", {}).get("nvrtc")
        lines.append(f"{gpu} | python {env.get('python')} | torch {env.get('torch')} (CUDA {env.get('torch_cuda')}) "
                     f"| CuPy {env.get('cupy')} | NVRTC {nvrtc}")
    lines.append(f"{'stage':<12} {'status':<11} {'seconds':>7}  {'device':<22} note")
    for stage in summary["stages"]:
        lines.append(f"{stage['name']:<12} {stage['status']:<11} {stage['seconds']:>7.1f}  {stage['device']:<22} "
                     f"{stage['reason'][:90]}")
    rows = next((s["details"].get("benchmarks") for s in summary["stages"] if s["name"] == "benchmarks"), None)
    if rows:
        lines.append("")
        lines.append(f"{'benchmark (CUDA events, median ms)':<62} {'contender':<20} {'ms':>9} {'vs obfgrad':>10}")
        ours = {row["group"]: row["cuda_ms_median"] for row in rows if row["contender"] == "obfgrad"}
        for row in rows:
            ms, base = row["cuda_ms_median"], ours.get(row["group"])
            ratio = f"{ms / base:.2f}x" if ms and base and row["contender"] != "obfgrad" else ""
            shown_ms = ms if ms is not None else float("nan")
            lines.append(f"{row['group'][:62]:<62} {row['contender']:<20} {shown_ms:>9.3f} "
                         f"{ratio:>10}")
    return "\n".join(lines)


def _on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for summary.json, the log and results")
    parser.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT,
                        help=f"seconds for the whole check (default {DEFAULT_TIME_LIMIT:.0f})")
    parser.add_argument("--dry", action="store_true", help="CPU-only dry mode even where a GPU is present")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the stages (default: this one)")
    args = parser.parse_args(argv)
    # NaN passes a "<=" test and would silently lift the limit (every stage then gets its full
    # budget, and summary.json records NaN); inf would too.
    if not math.isfinite(args.time_limit) or args.time_limit <= RESERVE_SECONDS:
        parser.error(f"--time-limit: expected a finite number of seconds above {RESERVE_SECONDS:.0f}, "
                     f"got {args.time_limit}")
    error = _output_problem(args.out)
    if error:
        parser.error(f"--out: {error}")
    if shutil.which(args.python) is None:  # else every stage would fail with FileNotFoundError
        parser.error(f"--python: {args.python!r} is not an executable")
    return args


def _output_problem(out: Path) -> Optional[str]:
    """Why ``out`` cannot hold the results (None: it can), checked before any stage runs."""
    if out.exists() and not out.is_dir():
        return f"{out} exists and is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        return f"cannot write in {out} ({exc.strerror or exc})"
    return None


def dry_reason(forced: bool) -> Optional[str]:
    if forced:
        return "--dry given"
    try:
        import torch
    except ImportError as exc:
        return f"torch does not import ({exc})"
    if not torch.cuda.is_available():
        return "no CUDA device: torch.cuda.is_available() is False"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    check = Check(args.out.resolve(), args.time_limit, dry_reason(args.dry), args.python)
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        run_stages(check)
    except Interrupted:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        check.write_summary()
        shutil.rmtree(check.scratch, ignore_errors=True)
    summary = check.summary()
    print(format_table(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
