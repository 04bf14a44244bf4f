"""Sharding attacks across processes (torch.distributed, gloo on CPU): the merged result of two
processes must equal a single-process run with the same seed, record for record.

1. ``evaluate(..., distributed=True)`` on a tiny model with randomness everywhere (random-start
   PGD and a noisy model, both drawing from torch's global generator) and an odd number of
   uneven batches, in two spawned processes, against the same call in one process.
2. The runner end to end under ``torchrun --nproc_per_node 2`` (the SAP and LID rows' dry runs,
   which re-judge the gathered ``x_adv``) against a plain single-process run: same records, same
   row results, same table; only rank 0 writes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from obfgrad.attacks import PGD
from obfgrad.eval import evaluate

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # reproduce/ is a top-level directory of the repo, not installed
    sys.path.append(str(ROOT))

from reproduce import distributed  # noqa: E402

N_EXAMPLES, BATCH_SIZE, SEED = 9, 2, 1  # 5 batches: rank 0 attacks 3, rank 1 attacks 2


class _NoisyNet(nn.Module):
    """A stochastic model (like SAP): logits plus noise from torch's global generator."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 3)

    def forward(self, x):
        logits = self.linear(x.flatten(1))
        return logits + 0.3 * torch.randn_like(logits)


def _problem():
    torch.manual_seed(0)
    model = _NoisyNet()
    x = torch.rand(N_EXAMPLES, 1, 4, 4)
    y = torch.randint(0, 3, (N_EXAMPLES,))
    attack = PGD(distance="linf", eps=0.1, steps=3, step_size=0.05, random_start=True, early_stop=False)
    return model, attack, x, y


def _evaluate(distributed_run: bool):
    model, attack, x, y = _problem()
    torch.manual_seed(SEED)  # the caller's global stream: evaluate draws its base seed from it
    result = evaluate(model, attack, x, y, distance="linf", eps=0.1, batch_size=BATCH_SIZE, progress=False,
                      keep_x_adv=True, distributed=distributed_run)
    next_draw = torch.rand(4)  # where the caller's stream continues after evaluate
    return {"records": result.records, "summary": result.summary(), "config": result.config,
            "x_adv": result.x_adv, "next_draw": next_draw, "world_size": result.meta["world_size"]}


def _evaluate_on_rank(rank: int, world: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        torch.save(_evaluate(distributed_run=True), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_evaluate_sharded_over_two_processes_equals_one_process(tmp_path):
    single = _evaluate(distributed_run=False)
    assert single["world_size"] == 1
    # Deterministic: the same call again gives the same records and x_adv.
    again = _evaluate(distributed_run=False)
    assert again["records"] == single["records"] and torch.equal(again["x_adv"], single["x_adv"])

    mp.spawn(_evaluate_on_rank, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        merged = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert merged["world_size"] == 2
        assert merged["records"] == single["records"]
        assert [r["index"] for r in merged["records"]] == list(range(N_EXAMPLES))
        assert merged["summary"] == single["summary"]
        assert merged["config"] == single["config"]
        assert torch.equal(merged["x_adv"], single["x_adv"])
        assert torch.equal(merged["next_draw"], single["next_draw"])  # ranks continue in step


def test_evaluate_randomness_depends_on_the_seed_and_batch_not_on_earlier_batches():
    model, attack, x, y = _problem()

    def run(seed, xs, ys, judge_seed=1000):
        return evaluate(model, attack, xs, ys, distance="linf", eps=0.1, batch_size=BATCH_SIZE, progress=False,
                        keep_x_adv=True, seed=seed, judge_seed=judge_seed)

    full = run(5, x, y)
    assert torch.equal(run(5, x, y).x_adv, full.x_adv)
    assert not torch.equal(run(6, x, y).x_adv, full.x_adv)
    # Batch b is attacked with seed + b and judged with judge_seed + b whatever ran before it: the
    # last batch alone, as batch 0 of seed + 4 and judge_seed + 4.
    tail = run(5 + 4, x[8:], y[8:], judge_seed=1000 + 4)
    assert torch.equal(tail.x_adv, full.x_adv[8:])
    assert {k: v for k, v in tail.records[0].items() if k != "index"} == \
        {k: v for k, v in full.records[8].items() if k != "index"}


def test_evaluate_distributed_without_a_process_group_is_refused():
    model, attack, x, y = _problem()
    with pytest.raises(ValueError, match="distributed"):
        evaluate(model, attack, x, y, distance="linf", eps=0.1, progress=False, distributed=True)


def test_single_process_helpers_do_nothing():
    assert (distributed.rank(), distributed.world(), distributed.is_main()) == (0, 1, True)
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert distributed.from_main(lambda: 42) == 42
    with distributed.main_first():
        distributed.barrier()


# The runner with evaluate's batch size forced to 1, so the dry run's 2 examples are 2 batches:
# one per rank (the rows' default batch of 128 would leave rank 1 without work).
_ENTRY = """
import sys
sys.path.insert(0, {root!r})
import obfgrad.eval.robustness as robustness
robustness.evaluate.__kwdefaults__["batch_size"] = 1
from reproduce import runner
sys.exit(runner.main(sys.argv[1:]))
"""

# Timings, paths, and checksums over content that holds timings (records files carry wall times).
_TIMING_KEYS = {"seconds", "wall_seconds", "build_seconds", "date", "records", "detector_records", "checksum",
                "records_sha256", "detector_records_sha256"}


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in _TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _run_runner(command, results: Path, tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OBFGRAD_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["--profile", "paper", "--dry-run", "--rows", "sap,lid", "--results-dir", str(results), "--quiet"]
    done = subprocess.run(command + args, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_runner_under_torchrun_with_two_processes_equals_one_process(tmp_path):
    entry = tmp_path / "entry.py"
    entry.write_text(_ENTRY.format(root=str(ROOT)))
    one, two = tmp_path / "one", tmp_path / "two"
    single_out = _run_runner([sys.executable, str(entry)], one, tmp_path)
    torchrun = ["torchrun", "--standalone", "--nproc_per_node", "2", str(entry)]
    sharded_out = _run_runner(torchrun, two, tmp_path)

    assert sharded_out.count("# Table 1") == 1  # rank 0 alone logs and prints
    assert "[sap]" in single_out and "[sap]" in sharded_out
    records = sorted(p.name for p in (one / "records").iterdir())
    assert records == sorted(p.name for p in (two / "records").iterdir())
    assert any(name.startswith("sap.") for name in records) and any(name.startswith("lid.") for name in records)
    for name in records:
        expected, merged = (json.loads((d / "records" / name).read_text()) for d in (one, two))
        if "meta" in expected:
            assert merged["meta"]["world_size"] == 2 and expected["meta"]["world_size"] == 1
            assert [r["index"] for r in merged["records"]] == [0, 1]
            expected.pop("meta"), merged.pop("meta")
        assert merged == expected, name
    for row in ("sap", "lid"):
        expected, merged = (json.loads((d / "rows" / f"{row}.json").read_text()) for d in (one, two))
        assert _without_timing(merged) == _without_timing(expected)
    expected, merged = (json.loads((d / "table1.json").read_text()) for d in (one, two))
    assert _without_timing(merged["rows"]) == _without_timing(expected["rows"])
