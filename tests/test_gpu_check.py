"""
Tests for benchmarks/gpu_check.py, the one-command GPU check. CPU only, offline.

    python -m pytest tests/test_gpu_check.py -q

The end-to-end tests run `prepare --smoke` once and both plans on it for real (a tiny model on
the CPU, one part per code path, the SIGTERM + --resume training run included), check that what
they wrote would come back from the GPU machine (its limits, below), and unpack it as a GPU session
commits it. They need the offline data beside the repo (../shared/data, as CI has it). Another run
is stopped with SIGTERM part-way. The other tests call the pieces in-process: the skip / fail /
timeout / out-of-memory paths, the training-log checks on the faults they are there for, and the
comparison's arithmetic on synthetic logs.
"""

import json
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import train_gpt2
from benchmarks import compare, gpu_check

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

needs_shared = pytest.mark.skipif(not (SHARED / "corpus").is_dir(),
                                  reason=f"offline data not found at {SHARED} "
                                  "(CI clones the repo beside shared/)")

# What the device machine hands back from `--out $OUT/gpu_check` (its documented limits, written
# out here rather than taken from gpu_check, so a change there cannot loosen the test with it)
DEVICE_MAX_FILES = 8
DEVICE_MAX_FILE_BYTES = 16 * 2**20
DEVICE_MAX_TOTAL_BYTES = 64 * 2**20
DEVICE_MAX_PARTS = 2  # $OUT/gpu_check/a/x comes back, $OUT/gpu_check/a/b/x does not
DEVICE_SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")


def assert_returnable(out, well_under=DEVICE_MAX_FILE_BYTES):
    """Everything under `out` comes back from the GPU machine: few enough files, shallow enough,
    safe names, small enough, no temp file left; and the archive would unpack the same way."""
    entries = sorted(out.rglob("*"))
    files = [p for p in entries if p.is_file() and not p.is_symlink()]
    odd = [p for p in entries if p.is_symlink() or not (p.is_file() or p.is_dir())]
    assert not odd, "links or special files"
    assert 0 < len(files) <= DEVICE_MAX_FILES, [str(p.relative_to(out)) for p in files]
    for p in entries:
        rel = p.relative_to(out)
        assert len(rel.parts) <= DEVICE_MAX_PARTS, f"{rel} is too deep"
        assert all(DEVICE_SAFE_NAME.fullmatch(part) for part in rel.parts), f"{rel}: unsafe name"
        assert not p.name.endswith(".tmp"), f"{rel}: a temp file was left behind"
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in files}
    assert all(size < min(well_under, DEVICE_MAX_FILE_BYTES) for size in sizes.values()), sizes
    assert sum(sizes.values()) < DEVICE_MAX_TOTAL_BYTES
    for archive in out.rglob("*.tar.gz"):
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                parts = m.name.split("/")
                assert m.isfile() and len(parts) <= DEVICE_MAX_PARTS and all(
                    DEVICE_SAFE_NAME.fullmatch(x) and x not in (".", "..") for x in parts), m.name
    return sizes


def archive_members(out):
    with tarfile.open(out / gpu_check.ARCHIVE) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()}


def read_if_exists(path):
    return path.read_text() if path.is_file() else ""


def read_records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory):
    """`prepare --smoke` once for the tests that run a plan on it."""
    data = tmp_path_factory.mktemp("smoke") / "data"
    assert gpu_check.main(["prepare", "--smoke", "--out", str(data), "--shared", str(SHARED)]) == 0
    return data


@needs_shared
def test_smoke_run_writes_every_result_within_the_device_limits(tmp_path, smoke_data, capsys):
    data, out = smoke_data, tmp_path / "out"
    manifest = json.loads((data / gpu_check.MANIFEST).read_text())
    assert manifest["shards"]["val"] == 1 and manifest["shards"]["train"] >= 2

    capsys.readouterr()
    code = gpu_check.main(["run", "--smoke", "--data", str(data), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-4000:]
    sizes = assert_returnable(out, well_under=2**20)
    assert set(sizes) == {"summary.md", "results.jsonl", "env.json", "logs.tar.gz"}

    records = read_records(out)
    plan = gpu_check.build_plan(gpu_check.SMOKE)
    assert [r["part"] for r in records] == [p.name for p in plan]
    not_ok = [(r["part"], r["status"], r.get("error") or r.get("reason")) for r in records
              if r["status"] != "ok"]
    assert not not_ok
    logs = archive_members(out)
    for r in records:
        assert r["log"] in logs and r["result"], r["part"]
    for name in ("log.txt", "log_stopped.txt", "config.json"):
        assert f"train-resume/{name}" in logs, name

    summary = (out / "summary.md").read_text()
    assert printed.rstrip().endswith(summary.rstrip())  # printed at the end, too
    # nobody takes a smoke run for a GPU result: its first line and its folder name say so
    assert summary.startswith("# gpu_check SMOKE RUN (tiny model on the CPU, not a GPU result)")
    assert "Every reference pair ran." in summary
    for r in records:
        assert f"| {r['part']} | ok |" in summary, r["part"]
    assert f"{len(plan)} ok, 0 failed, 0 oom, 0 skipped" in summary and "- **oom**:" in summary
    assert "Running now" not in summary

    matrix = [r for r in records if r["group"] == "matrix"]
    assert all(r["result"]["tokens_per_s"] > 0 and r["result"]["gpu"] == "cpu" for r in matrix)
    # the ratio to the reference step at the same micro-batch, in the row of ours
    row = next(line for line in summary.splitlines() if line.startswith("| matrix-gpt2-b2 |"))
    assert re.fullmatch(r"\d+\.\d{3}x", row.strip("| ").split(" | ")[6]), row
    xl = next(r for r in records if r["part"].startswith("matrix-xl-ac"))["result"]
    assert xl["estimate_gib"] > 0  # the trainer's memory estimate, beside the peak on a GPU

    train = next(r for r in records if r["group"] == "train")["result"]
    assert train["checks_passed"], train["checks"]
    assert 0 < train["resume_step"] < train["max_steps"]
    assert len(train["train_loss"]) == train["max_steps"]
    assert not list(out.rglob("*.pt")), "checkpoints must stay out of --out (GBs on a GPU)"

    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["card"] == "cpu" and env["cuda_available"] is False
    assert "train_gpt2.py" in env["sources_sha256"] and env["started"]
    assert re.fullmatch(r"\d{8}-cpu-smoke", gpu_check.default_dest(env).name)

    # what a GPU session commits: the three files and the logs, no archive
    dest = tmp_path / "committed"
    capsys.readouterr()
    assert gpu_check.main(["unpack", str(out), "--dest", str(dest)]) == 0
    said = capsys.readouterr().out
    assert "git add" not in said and "outside the repository" in said  # it would fail there
    committed = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    assert committed == {"summary.md", "results.jsonl", "env.json"} | set(logs)
    assert (dest / "train-resume" / "log.txt").read_text() == logs["train-resume/log.txt"]
    assert gpu_check.main(["unpack", str(out), "--dest", str(dest)]) == 1  # never over a full one


def test_a_run_stopped_with_sigterm_keeps_what_finished(tmp_path):
    """SIGTERM part-way (a device call at its limit): the folder is complete at any moment, the
    part then running is recorded failed, and its log is in the archive."""
    out = tmp_path / "out"
    cmd = [sys.executable, "benchmarks/gpu_check.py", "run", "--smoke", "--data",
           tmp_path / "no_data", "--out", out, "--parts", "matrix-gpt2-b2,reference-b2"]
    proc = subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        # signal once the summary names the second part running: earlier, while the first part's
        # record is still being saved, the second is rightly recorded skipped, not failed
        deadline = time.monotonic() + 120
        while "Running now: reference-b2" not in read_if_exists(out / "summary.md"):
            assert proc.poll() is None and time.monotonic() < deadline, "the 2nd part never started"
            time.sleep(0.05)
        snapshot = tmp_path / "killed_now"  # what a SIGKILL right now would leave
        shutil.copytree(out, snapshot)
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()

    assert_returnable(snapshot)
    assert read_records(snapshot)[0]["status"] == "ok"
    assert "matrix-gpt2-b2.log" in archive_members(snapshot)
    assert "| matrix-gpt2-b2 | ok |" in (snapshot / "summary.md").read_text()
    assert "Running now: reference-b2" in (snapshot / "summary.md").read_text()
    assert archive_members(snapshot)["reference-b2.log"] == ""  # there from the start, filled later

    assert_returnable(out)
    records = {r["part"]: r for r in read_records(out)}
    assert list(records) == ["matrix-gpt2-b2", "reference-b2"]
    assert records["reference-b2"]["status"] == "failed", stdout
    assert "interrupted" in records["reference-b2"]["error"]
    assert set(archive_members(out)) == {"matrix-gpt2-b2.log", "reference-b2.log"}
    summary = (out / "summary.md").read_text()
    assert "Running now" not in summary
    assert "- reference-b2 (failed): gpu_check.py was interrupted" in summary
    assert proc.returncode == 1


def run_plan(runner, plan, blocked=None):
    """Run the parts, close the runner whatever happens -> {part name: its record}."""
    try:
        runner.run_all(plan, blocked or {})
    finally:
        runner.close()
    return {r["part"]: r for r in runner.records}


def fake_part(name, code, kind="ours"):
    return gpu_check.Part(name, "matrix", kind, [sys.executable, "-c", code],
                          info=dict(impl="ours", arch="gpt2", micro_batch=1))


def test_failures_timeouts_and_skips_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    out = tmp_path / "out"
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, out, budget_s=60)
    runner.estimate = gpu_check.Estimator({"ours": 1, "reference": 1000})
    monkeypatch.setattr(gpu_check.Runner, "left", lambda self: 3.0)  # nearly spent: 3 s per part
    plan = [
        fake_part("crash", "import sys; print('partial output'); sys.exit('boom: bad flag')"),
        fake_part("hang", "import time; time.sleep(600)"),
        fake_part("too-big", "print('never runs')", kind="reference"),
        fake_part("no-json", "print('done, but no result line')"),
        fake_part("fine", "import json; print('log'); print(json.dumps({'tokens_per_s': 5.0}))"),
    ]
    rec = run_plan(runner, plan)
    assert rec["crash"]["status"] == "failed" and rec["crash"]["rc"] == 1
    assert "boom: bad flag" in rec["crash"]["error"]
    assert rec["hang"]["status"] == "failed" and "timed out" in rec["hang"]["error"]
    assert rec["too-big"]["status"] == "skipped" and "budget" in rec["too-big"]["reason"]
    assert rec["no-json"]["status"] == "failed" and "no JSON" in rec["no-json"]["error"]
    assert rec["fine"]["status"] == "ok" and rec["fine"]["result"] == {"tokens_per_s": 5.0}
    assert [r["part"] for r in read_records(out)] == [p.name for p in plan]
    assert set(archive_members(out)) == {f"{p.name}.log" for p in plan if p.name != "too-big"}
    summary = (out / "summary.md").read_text()
    assert "## Not ok" in summary and "- too-big (skipped)" in summary
    assert_returnable(out)
    assert gpu_check.exit_code(runner.records) == 1


TRAINER_OOM = ("error: out of memory at micro-batch 64 (card: NVIDIA A10G, 22 GiB); "
               "--micro_batch values that divide --total_batch 524288: 32, 16, 8")
TRACEBACK_OOM = ("Traceback (most recent call last):\n"
                 "  File \"bench_hellaswag.py\", line 9, in <module>\n"
                 "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.07 GiB. "
                 "GPU 0 has a total "
                 "capacity of 22.00 GiB of which 1.20 GiB is free.\n")


def test_out_of_memory_is_its_own_status_and_the_plan_goes_on(tmp_path):
    out = tmp_path / "out"
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, out, budget_s=120)
    runner.estimate = gpu_check.Estimator({"ours": 1, "train": 1})
    train_oom = gpu_check.Part("train-resume", "train", "train",
                               [sys.executable, "-c", "import sys; "
                                f"print('[rank0]: {TRAINER_OOM}', file=sys.stderr); sys.exit(1)"],
                               info=dict(gpu_check.SMOKE.train, stop_after=2))
    plan = [
        fake_part("trainer-oom", f"import sys; print('compiling'); sys.exit({TRAINER_OOM!r})"),
        fake_part("traceback-oom", f"import sys; sys.stderr.write({TRACEBACK_OOM!r}); sys.exit(1)"),
        train_oom,
        fake_part("other-crash", "import sys; print('12 GiB of memory free'); "
                  "sys.exit('RuntimeError: shape mismatch')"),
        fake_part("fine", "import json; print(json.dumps({'tokens_per_s': 5.0}))"),
    ]
    rec = run_plan(runner, plan)
    assert [r["status"] for r in runner.records] == ["oom", "oom", "oom", "failed", "ok"]
    assert rec["trainer-oom"]["error"].splitlines()[0] == TRAINER_OOM
    assert rec["traceback-oom"]["error"].startswith(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate")
    assert rec["train-resume"]["error"].splitlines()[0] == TRAINER_OOM  # the rank prefix dropped
    assert runner.estimate.expected == 1  # only the ok part fed the estimator
    summary = (out / "summary.md").read_text()
    assert "| trainer-oom | oom |" in summary and "| train-resume | oom |" in summary
    assert "1 ok, 1 failed, 3 oom, 0 skipped" in summary
    assert f"- trainer-oom (oom): {TRAINER_OOM}" in summary
    assert "- **oom**: CUDA out of memory" in summary
    assert_returnable(out)
    # an OOM is a finding about the card, not a fault: no failed part, exit 0
    assert gpu_check.exit_code([r for r in runner.records if r["status"] != "failed"]) == 0
    # nothing ran ok
    assert gpu_check.exit_code([r for r in runner.records if r["status"] == "oom"]) == 1


def test_the_reference_step_reports_out_of_memory_in_one_line(tmp_path, monkeypatch, capsys):
    import torch
    from benchmarks import bench_reference_step as ref

    tiny = ["--micro_batch", "8", "--seq_len", "16", "--n_layer", "1", "--n_head", "1",
            "--n_embd", "8", "--block_size", "16", "--device", "cpu", "--dtype", "fp32",
            "--compile", "0", "--steps", "1"]

    def oom(self, x, y):  # as torch.compile raises it: wrapped in an error of its own
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
        except torch.OutOfMemoryError as e:
            raise RuntimeError("backend='inductor' raised an error") from e

    monkeypatch.setattr(ref.NanoGPTLoss, "forward", oom)
    assert ref.main(tiny) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: out of memory at micro-batch 8 x 16 tokens on cpu")
    assert "--micro_batch 4 or 2 or 1" in err[-1] and sum("error" in line for line in err) == 1
    log = tmp_path / "reference.log"
    log.write_text("\n".join(err))
    recorded = gpu_check.outcome("exit code 1", log, 1.0)  # what gpu_check records
    assert recorded["status"] == "oom" and recorded["error"].splitlines()[0] == err[-1]

    monkeypatch.setattr(ref.NanoGPTLoss, "forward", lambda self, x, y: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else stays a traceback
        ref.main(tiny)


def test_output_files_are_written_whole_and_the_folder_holds_only_them(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.md").write_text("old")
    (out / "summary.md.tmp").write_text("left by a kill")
    gpu_check.clear_out(out)  # our own files from an earlier run: removed
    assert not list(out.iterdir())
    (out / "notes.txt").write_text("mine")
    with pytest.raises(gpu_check.CheckError, match="notes.txt"):
        gpu_check.clear_out(out)

    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, tmp_path, budget_s=60)
    runner.write("summary.md", "first")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(train_gpt2.os, "replace", failing_replace)
    with pytest.raises(OSError):
        runner.write("summary.md", "second")
    runner.close()
    target = tmp_path / "summary.md"
    assert target.read_text() == "first" and not (tmp_path / "summary.md.tmp").exists()

    log = tmp_path / "huge.log"
    log.write_bytes(b"command line\n" + b"x" * 3_000_000 + b"\nthe error at the end\n")
    cut = gpu_check.read_capped(log, cap=4096)
    assert len(cut) < 4200 and cut.startswith(b"command line")
    assert cut.endswith(b"the error at the end\n")
    assert b"bytes cut here" in cut


def test_missing_data_skips_the_parts_that_need_it(tmp_path):
    plan = gpu_check.build_plan(gpu_check.SMOKE)
    problem = gpu_check.verify_data(tmp_path / "nowhere")
    assert "prepare" in problem
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, tmp_path / "out", budget_s=60)
    needy = [p for p in plan if p.needs_data]
    run_plan(runner, needy, blocked={p.name: problem for p in needy})
    assert {r["group"] for r in runner.records} == {"hellaswag", "train"}
    assert all(r["status"] == "skipped" and "prepare" in r["reason"] for r in runner.records)
    assert_returnable(tmp_path / "out")


def test_prepare_refuses_without_sources(tmp_path, capsys):
    assert gpu_check.main(["prepare", "--out", str(tmp_path / "data"), "--shared",
                           str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: missing sources:") and len(err.strip().splitlines()) == 1


def dry_run(capsys, *args):
    """`run --dry_run` in-process -> what it printed."""
    capsys.readouterr()
    assert gpu_check.main(["run", "--dry_run", *map(str, args)]) == 0
    return capsys.readouterr().out


def test_dry_run_prints_the_plan_in_priority_order_without_running(tmp_path, capsys):
    stdout = dry_run(capsys, "--data", tmp_path)
    plan = gpu_check.build_plan(gpu_check.GPU)
    assert [p.name for p in plan[:4]] == ["matrix-gpt2-b16", "reference-b16", "train-resume",
                                          "hellaswag"]
    lines = {p.name: next(line for line in stdout.splitlines() if f" {p.name} " in line)
             for p in plan}
    assert [p.name for p in plan] == sorted(lines, key=lambda name: stdout.index(lines[name]))
    # at the stated compile time the headline pair and the train run fit the default budget
    assert all("starts at" in lines[name]
               for name in ("matrix-gpt2-b16", "reference-b16", "train-resume"))
    assert "compiles GPT-2 124M in ~70 s" in stdout and "estimated total" in stdout
    assert not (tmp_path / "results.jsonl").exists()


# --- the training-log checks must fail on the faults they exist for

def train_records(tmp_path, losses, val_every=5, max_steps=10, extra=""):
    """The train stream of a log.txt as the checks read it (train_gpt2.read_log)."""
    lines = [f"{s} val 10.0" for s in sorted(gpu_check.due_steps(val_every, max_steps))]
    lines += [f"{s} train {v}" for s, v in enumerate(losses)]
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n" + extra)
    return gpu_check.by_name(train_gpt2.read_log(tmp_path / "log.txt").records, "train")


def test_schedule_check_catches_missing_and_duplicated_steps(tmp_path):
    train = train_records(tmp_path, [5.0] * 10)
    assert gpu_check.check_schedule(train, range(10))["ok"]
    twice = train_records(tmp_path, [5.0] * 10, extra="3 train 5.0\n")
    assert not gpu_check.check_schedule(twice, range(10))["ok"]
    short = train_records(tmp_path, [5.0] * 9)
    assert "missing [9]" in gpu_check.check_schedule(short, range(10))["detail"]
    assert gpu_check.due_steps(5, 12) == {0, 5, 10, 12}
    assert gpu_check.due_steps(0, 12) == set()


def test_continuity_check_catches_a_jump_after_the_resume(tmp_path):
    smooth = train_records(tmp_path, [9, 8.8, 8.6, 8.4, 8.2, 8.0, 7.9, 7.8, 7.7, 7.6])
    assert gpu_check.continuity(smooth, 5)["ok"]
    # resumed from fresh weights instead of the checkpoint: the loss jumps back up
    jump = train_records(tmp_path, [9, 8.8, 8.6, 8.4, 8.2, 10.9, 10.8, 10.7, 10.6, 10.5])
    assert not gpu_check.continuity(jump, 5)["ok"]


def test_the_running_log_is_read_without_its_half_written_last_line(tmp_path):
    (tmp_path / "log.txt").write_text("0 train 10.5\n0 lr 6.000000e-04\n1 train 10.4\n2 tra")
    assert gpu_check.last_train_step(tmp_path / "log.txt") == 1
    assert gpu_check.last_train_step(tmp_path / "missing.txt") == -1


def test_a_reference_pair_starts_only_together_and_the_summary_names_it(tmp_path, monkeypatch):
    """Time for one more part but not two: ours at b64 must not run without its reference."""
    out = tmp_path / "out"
    runner = gpu_check.Runner(gpu_check.SMOKE, tmp_path, out, budget_s=60)
    runner.estimate = gpu_check.Estimator({"ours": 2, "reference": 2})
    monkeypatch.setattr(gpu_check.Runner, "left", lambda self: 3.0)
    fine = "import json; print(json.dumps({'tokens_per_s': 5.0}))"
    plan = [gpu_check.Part(name, "matrix", impl, [sys.executable, "-c", fine], pair=pair,
                           info=dict(impl=impl, arch="gpt2", micro_batch=64))
            for name, impl, pair in (("matrix-gpt2-b64", "ours", "reference-b64"),
                                     ("reference-b64", "reference", "matrix-gpt2-b64"))]
    rec = run_plan(runner, plan)
    assert [r["status"] for r in rec.values()] == ["skipped", "skipped"]
    assert "with its pair reference-b64" in rec["matrix-gpt2-b64"]["reason"]
    summary = (out / "summary.md").read_text()
    assert "- b64: matrix-gpt2-b64 skipped" in summary and "reference-b64 skipped" in summary
    assert "--parts matrix-gpt2-b64,reference-b64" in summary  # the next call's command


def test_dry_run_says_what_the_budget_skips(tmp_path, capsys):
    late = re.search(r"a next call: --parts (\S+)", dry_run(capsys, "--data", tmp_path))
    assert late and "hellaswag" in late.group(1).split(",")  # not in 540 s at 70 s a compile
    lines = [line for line in dry_run(capsys, "--plan", "compare", "--data", tmp_path)
             .splitlines() if " compare-" in line]
    assert [line.split()[1] for line in lines] == [f"compare-{v.name}" for v in compare.VARIANTS]
    assert all("starts at" in line for line in lines), lines


# --- the compare plan


def test_the_gpu_compare_plan_gives_each_variant_a_val_curve_at_equal_tokens():
    plan = gpu_check.build_plan(gpu_check.GPU, "compare")
    assert [p.info["variant"] for p in plan] == [v.name for v in compare.VARIANTS]
    for part in plan:
        flags = dict(zip(part.cmd[2::2], part.cmd[3::2]))
        points = len(gpu_check.due_steps(int(flags["--val_every"]), int(flags["--max_steps"])))
        assert points >= 10, part.name  # a curve to interpolate the target on
        assert (flags["--total_batch"], flags["--max_steps"]) == ("32768", "200")  # equal tokens
        assert ("--warmup_steps" in flags) != (part.info["variant"] == "fast")  # its own schedule


def fake_run(folder, val, tokens_per_step=100_000, step_ms=100.0):
    """A finished run folder as the trainer writes it: log.txt with a val curve, config.json."""
    folder.mkdir()
    steps = range(val[-1][0] + 1)
    lines = [f"{s} train 9.0\n{s} dt {step_ms}\n{s} tok/s 5000" for s in steps]
    lines += [f"{s} val {v}" for s, v in val] + [f"{steps[-1]} hella_acc 0.25"]
    (folder / "log.txt").write_text("\n".join(lines) + "\n")
    (folder / "config.json").write_text(json.dumps({"tokens_per_step": tokens_per_step,
                                                    "command": f"train_gpt2.py {folder.name}"}))
    return folder


def test_tokens_to_the_target_come_from_each_variants_own_val_curve(tmp_path, capsys):
    gpt2 = fake_run(tmp_path / "gpt2", [(0, 11.0), (4, 8.0), (8, 6.0)])
    faster = fake_run(tmp_path / "faster", [(0, 11.0), (4, 7.0), (8, 5.0)])  # 6.0 at step 5
    slower = fake_run(tmp_path / "slower", [(0, 11.0), (4, 9.0), (8, 7.0)])  # never 6.0
    capsys.readouterr()
    assert compare.main([str(gpt2), str(faster), str(slower)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    # the target is the gpt2 run's final val loss, reached at its last step: 1.00x by definition
    assert rows["gpt2"][3:5] == ["0.80M", "1.00x"]
    # 7.0 at step 4, 5.0 at step 8: 6.0 halfway, at step 6 -> 0.6M tokens, 8/6 fewer than gpt2's;
    # the train seconds halfway between steps 1-3's (0.3 s) and steps 1-7's (0.7 s)
    assert rows["faster"][3:6] == ["0.60M", "1.33x", "0.5"]
    assert rows["slower"][3:5] == ["not in 0.90M", ""]  # 9 steps of 100k tokens
    hit = compare.reach(compare.figures(faster)["val"], 6.0)
    assert hit == (6.0, 0.5)


@needs_shared
def test_compare_smoke_reports_tokens_to_the_gpt2_runs_val_loss(tmp_path, smoke_data):
    """The plan's code path on the CPU: the target run, and the fast recipe (its own schedule);
    the arithmetic is tested above."""
    out = tmp_path / "out"
    assert gpu_check.main(["run", "--plan", "compare", "--smoke", "--data", str(smoke_data),
                           "--out", str(out)]) == 0
    assert_returnable(out)
    records = {r["config"]["variant"]: r for r in read_records(out)}
    assert list(records) == ["gpt2", "fast"]
    assert records["fast"]["status"] == "ok"
    logs, summary = archive_members(out), (out / "summary.md").read_text()
    gpt2 = records["gpt2"]["result"]
    steps = gpu_check.SMOKE.compare["max_steps"]
    assert [s for s, _, _ in gpt2["val"]] == list(range(steps + 1))  # val every step
    assert gpt2["hella_acc"] is not None and gpt2["tok_per_s"] > 0
    assert "compare-gpt2/log.txt" in logs and "compare-gpt2/config.json" in logs
    target = gpt2["val"][-1][1]
    assert f"Target: the gpt2 run's final val loss, {target:.4f}." in summary
    assert re.search(r"^\| gpt2 \| ok \| [\d.]+ \| [\d.]+M \| 1\.00x \|", summary, re.M), summary
    # the variant's row agrees with its own val curve
    val, tps = records["fast"]["result"]["val"], records["fast"]["result"]["tokens_per_step"]
    hit = compare.reach(val, target)
    row = next(line for line in summary.splitlines() if line.startswith("| fast |"))
    assert f"| {hit[0] * tps / 1e6:.2f}M |" in row if hit else "| not in " in row
    assert "--warmup_steps" not in records["fast"]["command"]
