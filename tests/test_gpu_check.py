"""
Tests for benchmarks/gpu_check.py, the one-command GPU check. CPU only, offline.

    python -m pytest tests/test_gpu_check.py -q

The end-to-end test runs `prepare --smoke` and `run --smoke` for real (a tiny model on the CPU,
every part, the SIGTERM + --resume training run included) and checks the files a GPU session
would bring back. It needs the offline data beside the repo (../shared/data, as CI has it).
The other tests call the runner's pieces in-process: the skip / fail / timeout paths, and that
the training-log checks catch the faults they are there for.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_shared = pytest.mark.skipif(not (SHARED / "corpus").is_dir(),
                                  reason=f"offline data not found at {SHARED} (CI clones the repo beside shared/)")


def gpu_check_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "benchmarks/gpu_check.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@needs_shared
def test_smoke_run_writes_every_result(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    prep = gpu_check_cli("prepare", "--smoke", "--out", data, "--shared", SHARED, timeout=120)
    assert prep.returncode == 0, prep.stderr
    manifest = json.loads((data / gpu_check.MANIFEST).read_text())
    assert manifest["shards"]["val"] == 1 and manifest["shards"]["train"] >= 2

    proc = gpu_check_cli("run", "--smoke", "--data", data, "--out", out)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    for name in ("results.jsonl", "summary.md", "env.json"):
        assert (out / name).is_file(), name

    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    plan = gpu_check.build_plan(gpu_check.SMOKE)
    assert [r["part"] for r in records] == [p.name for p in plan]
    not_ok = [(r["part"], r["status"], r.get("error") or r.get("reason")) for r in records if r["status"] != "ok"]
    assert not not_ok
    for r in records:
        assert (out / r["log"]).is_file() and r["result"], r["part"]

    summary = (out / "summary.md").read_text()
    assert proc.stdout.rstrip().endswith(summary.rstrip())  # printed at the end, too
    for r in records:
        assert f"| {r['part']} | ok |" in summary, r["part"]

    matrix = [r for r in records if r["group"] == "matrix"]
    assert all(r["result"]["tokens_per_s"] > 0 and r["result"]["gpu"] == "cpu" for r in matrix)
    assert "x |" in summary  # the ratio to the reference step

    train = next(r for r in records if r["group"] == "train")["result"]
    assert train["checks_passed"], train["checks"]
    assert 0 < train["resume_step"] < train["max_steps"]
    assert len(train["train_loss"]) == train["max_steps"]
    for name in ("log.txt", "log_stopped.txt", "config.json"):
        assert (out / "train-resume" / name).is_file(), name
    assert not list(out.rglob("*.pt")), "checkpoints must stay out of --out (GBs on a GPU)"

    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["card"] == "cpu" and env["cuda_available"] is False
    assert "train_gpt2.py" in env["sources_sha256"]


def fake_part(name, code, kind="ours"):
    return gpu_check.Part(name, "matrix", kind, [sys.executable, "-c", code],
                          info=dict(impl="ours", arch="gpt2", micro_batch=1))


def test_failures_timeouts_and_skips_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, tmp_path, budget_s=60)
    runner.estimate = gpu_check.Estimator({"ours": 1, "reference": 1000})
    monkeypatch.setattr(gpu_check.Runner, "left", lambda self: 3.0)  # a nearly spent budget: 3 s per part
    plan = [
        fake_part("crash", "import sys; print('partial output'); sys.exit('boom: bad flag')"),
        fake_part("hang", "import time; time.sleep(600)"),
        fake_part("too-big", "print('never runs')", kind="reference"),
        fake_part("no-json", "print('done, but no result line')"),
        fake_part("fine", "import json; print('log line'); print(json.dumps({'tokens_per_s': 5.0}))"),
    ]
    runner.run_all(plan)
    rec = {r["part"]: r for r in runner.records}
    assert rec["crash"]["status"] == "failed" and rec["crash"]["rc"] == 1 and "boom: bad flag" in rec["crash"]["error"]
    assert rec["hang"]["status"] == "failed" and rec["hang"]["timed_out"] and "timed out" in rec["hang"]["error"]
    assert rec["too-big"]["status"] == "skipped" and "budget" in rec["too-big"]["reason"]
    assert rec["no-json"]["status"] == "failed" and "no JSON" in rec["no-json"]["error"]
    assert rec["fine"]["status"] == "ok" and rec["fine"]["result"] == {"tokens_per_s": 5.0}
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["part"] for line in lines] == [p.name for p in plan]
    summary = (tmp_path / "summary.md").read_text()
    assert "## Skipped and failed" in summary and "- too-big (skipped)" in summary


def test_missing_data_skips_the_parts_that_need_it(tmp_path):
    plan = gpu_check.build_plan(gpu_check.SMOKE)
    problem = gpu_check.verify_data(tmp_path / "nowhere")
    assert "prepare" in problem
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, tmp_path, budget_s=60)
    needy = [p for p in plan if p.needs_data]
    runner.run_all(needy, blocked={p.name: problem for p in needy})
    assert {r["group"] for r in runner.records} == {"hellaswag", "train"}
    assert all(r["status"] == "skipped" and "prepare" in r["reason"] for r in runner.records)


def test_prepare_refuses_without_sources(tmp_path):
    proc = gpu_check_cli("prepare", "--out", tmp_path / "data", "--shared", tmp_path / "empty", timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: missing sources:") and len(proc.stderr.strip().splitlines()) == 1


def test_dry_run_prints_the_plan_without_running(tmp_path):
    proc = gpu_check_cli("run", "--dry_run", "--data", tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for part in gpu_check.build_plan(gpu_check.GPU):
        assert part.name in proc.stdout
    assert "estimated total" in proc.stdout
    assert not (tmp_path / "results.jsonl").exists()


# --- the training-log checks must fail on the faults they exist for

def log_text(losses, val_every=5, max_steps=10, extra=""):
    lines = [f"{s} val 10.0" for s in sorted(gpu_check.due_steps(val_every, max_steps))]
    lines += [f"{s} train {v}" for s, v in enumerate(losses)]
    return "\n".join(lines) + "\n" + extra


def test_schedule_check_catches_missing_and_duplicated_steps():
    train = gpu_check.by_name(gpu_check.parse_log(log_text([5.0] * 10)), "train")
    assert gpu_check.check_schedule(train, range(10))["ok"]
    twice = gpu_check.by_name(gpu_check.parse_log(log_text([5.0] * 10, extra="3 train 5.0\n")), "train")
    assert not gpu_check.check_schedule(twice, range(10))["ok"]
    short = gpu_check.by_name(gpu_check.parse_log(log_text([5.0] * 9)), "train")
    assert "missing [9]" in gpu_check.check_schedule(short, range(10))["detail"]
    assert gpu_check.due_steps(5, 12) == {0, 5, 10, 12}
    assert gpu_check.due_steps(0, 12) == set()


def test_continuity_check_catches_a_jump_after_the_resume():
    smooth = gpu_check.by_name(gpu_check.parse_log(log_text([9, 8.8, 8.6, 8.4, 8.2, 8.0, 7.9, 7.8, 7.7, 7.6])), "train")
    assert gpu_check.continuity(smooth, 5)["ok"]
    # resumed from fresh weights instead of the checkpoint: the loss jumps back up
    jump = gpu_check.by_name(gpu_check.parse_log(log_text([9, 8.8, 8.6, 8.4, 8.2, 10.9, 10.8, 10.7, 10.6, 10.5])), "train")
    assert not gpu_check.continuity(jump, 5)["ok"]


def test_parse_log_skips_a_half_written_line():
    records = gpu_check.parse_log("0 train 10.5\n0 lr 6.000000e-04\n1 tok/s 12345\n1 tra")
    assert records == [(0, "train", 10.5), (0, "lr", 6e-4), (1, "tok/s", 12345.0)]
