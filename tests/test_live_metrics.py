"""
The live views and the time-to-target report of train_gpt2.py, on a tiny CPU run:

  * --tensorboard 1 and --wandb (offline) show log.txt's scalars, at its steps and values, each
    step once, also across a kill -9 and a continued run; the W&B run id stays in config.json
    (test_live_views_match_log_txt_across_a_kill);
  * a target crossed at an evaluation is printed once and recorded in config.json at the right
    step and tokens; the default targets do not claim what they cannot (test_target_*);
  * --usd_per_hour: the ETA shows the projected cost, the done: line the actual one;
  * without the flags nothing imports tensorboard or wandb and no new file appears; asking for a
    package that is not installed is one error line.
"""

import contextlib
import io
import json
import math
import os
import re
import signal
import struct
import sys
from pathlib import Path

import pytest

import train_gpt2 as tg
from helpers import TINY, assert_one_error_line, ok, run_cli, work_dir
from test_trainer import logged_past_checkpoint, signal_run_when

# TINY, faster: one micro-step of 4 sequences a step; evaluations and checkpoints every 2 steps
FAST = [*TINY, "--total_batch", "128", "--micro_batch", "4", "--max_steps", "4", "--val_every", "2",
        "--checkpoint_every", "2"]
LIVE_MODULES = ("tensorboard", "wandb", "torch.utils.tensorboard")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    yield from work_dir(tmp_path_factory, "live")


def run_main(capsys, *argv):
    capsys.readouterr()
    code = tg.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def plain(work):
    """A run without live views but with a price, in this process: (log dir, stdout, the modules
    the run imported)."""
    log_dir, out, before = work["root"] / "plain", io.StringIO(), set(sys.modules)
    with contextlib.redirect_stdout(out):  # capsys is per test
        assert tg.main([*FAST, "--data_dir", str(work["data"]), "--log_dir", str(log_dir),
                        "--usd_per_hour", "2.5"]) == 0
    return log_dir, out.getvalue(), set(sys.modules) - before


def log_streams(log_dir):
    records = tg.read_log(log_dir / "log.txt").records
    assert len({(s, n) for s, n, _ in records}) == len(records), "log.txt holds a step twice"
    return tg.read_log(log_dir / "log.txt").streams()


# -----------------------------------------------------------------------------
# without the flags: nothing changes


def test_without_the_flags_nothing_is_imported_and_no_file_appears(plain):
    log_dir, _, imported = plain
    assert not [m for m in imported if m.startswith(LIVE_MODULES)]
    assert sorted(os.listdir(log_dir)) == ["config.json", "log.txt", "model_00002.pt",
                                           "model_00004.pt"]
    assert "wandb_run_id" not in json.loads((log_dir / "config.json").read_text())


def test_a_live_view_that_is_not_installed_is_one_line(work, tmp_path, capsys, monkeypatch):
    for flags, package in ((["--tensorboard", "1"], "tensorboard"), (["--wandb", "p"], "wandb")):
        monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
        code, out, err = run_main(capsys, *FAST, "--data_dir", work["data"],
                                  "--log_dir", tmp_path / "x", *flags)
        assert_one_error_line(err, code, f"pip install {package}")
        assert not (tmp_path / "x").exists(), "checked before anything was built"


# -----------------------------------------------------------------------------
# the cost


def test_usd_per_hour_gives_the_projected_and_the_actual_cost(plain):
    log_dir, out, _ = plain
    steps = [line for line in out.splitlines() if re.match(r"step +\d+ \| loss", line)]
    assert len(steps) == 4
    eta = r"\| eta \d+h\d\dm \(\$\d+\.\d\d in all\)$"
    assert all(re.search(eta, line) for line in steps), steps
    done = re.search(r"^done: .* in \d+h\d\dm \(\$(\d+\.\d\d)\);", out, re.M)
    elapsed = log_streams(log_dir)["elapsed"][-1][1]  # seconds, as the done: line counts them
    assert done and abs(float(done.group(1)) - elapsed / 3600 * 2.5) <= 0.006, out


# -----------------------------------------------------------------------------
# time to target


def test_target_crossed_at_a_later_evaluation_is_printed_and_recorded(work, plain, capsys):
    vals = dict(log_streams(plain[0])["val"])
    assert vals[2] < vals[0], f"the tiny run's val loss did not fall: {vals}"
    target = round((vals[0] + vals[2]) / 2, 5)  # crossed at step 2, not at step 0
    log_dir = work["root"] / "target"
    code, out, err = run_main(capsys, *FAST, "--data_dir", work["data"], "--log_dir", log_dir,
                              "--target_val_loss", target, "--usd_per_hour", "2.5")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("target reached")]
    assert len(lines) == 1 and " at step 2, 256 tokens, " in lines[0] and "$" in lines[0], lines
    val, hella = json.loads((log_dir / "config.json").read_text())["targets"]
    assert (val["metric"], val["target"], val["applies"], val["note"]) == ("val", target, True,
                                                                           None)
    reached, logged_val = val["reached"], dict(log_streams(log_dir)["val"])[2]
    assert (reached["step"], reached["tokens"], reached["value"]) == (2, 256, logged_val)
    # training time: the steps before it, evaluations excluded; one process counts as one device
    trained = sum(v for s, v in log_streams(log_dir)["dt"] if s < 2) / 1000 / 3600
    assert abs(reached["train_hours"] - trained) < 1e-5
    assert reached["gpu_hours"] == reached["train_hours"]
    assert reached["usd"] == round(reached["train_hours"] * 2.5, 2)
    assert hella["reached"] is None and hella["target"] == tg.GPT2_HELLASWAG  # never evaluated


def test_default_targets_are_claimed_only_where_they_compare(work, tmp_path):
    def targets(*argv, previous=(), start_step=0):
        args = tg.get_args(["--data_dir", str(work["data"]), *map(str, argv)])
        return {t["metric"]: t for t in tg.run_targets(args, list(previous), start_step)}

    # GPT-2's val loss is on FineWeb-Edu: not these shards, unless the target is given
    default = targets()
    assert not default["val"]["applies"] and str(work["data"]) in default["val"]["note"]
    assert default["hella"]["applies"] and default["hella"]["note"] is None
    assert targets("--target_val_loss", 3.3)["val"]["applies"]
    # HellaSwag's default on a subset is not comparable; an explicit target is
    assert "--hellaswag_limit 100" in targets("--hellaswag_limit", 100)["hella"]["note"]
    assert targets("--hellaswag_limit", 100, "--target_hellaswag", 0.3)["hella"]["applies"]
    # a target reached before the step a run continues from stays; one on the abandoned
    # timeline goes, and so does one reached for another target value
    previous = [dict(metric="val", target=3.3, reached=dict(step=4)),
                dict(metric="hella", target=0.2945, reached=dict(step=6))]
    kept = targets("--target_val_loss", 3.3, previous=previous, start_step=5)
    assert kept["val"]["reached"] == {"step": 4} and kept["hella"]["reached"] is None
    changed = targets("--target_val_loss", 3.2, previous=previous, start_step=5)
    assert changed["val"]["reached"] is None
    # which shards are FineWeb-Edu: fineweb.py's manifest names its input; build-nanogpt's by name
    manifest = {"settings": {"input": {"type": "hub", "path": "HuggingFaceFW/fineweb-edu"}}}
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub/manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "files").mkdir()
    files = {"settings": {"input": {"type": "files"}}}
    (tmp_path / "files/manifest.json").write_text(json.dumps(files))
    (tmp_path / "nanogpt").mkdir()
    (tmp_path / "nanogpt/edufineweb_train_000001.npy").write_bytes(b"")
    found = [tg.is_fineweb_edu(tmp_path / d) for d in ("hub", "files", "nanogpt")]
    assert found == [True, False, True]
    assert not tg.is_fineweb_edu(work["data"])


# -----------------------------------------------------------------------------
# TensorBoard and W&B across a kill -9


def wandb_records(path):
    """The records of a .wandb file (wandb's transaction log: LevelDB's log format, 32 KiB
    blocks of chunks with a 7-byte header crc32/length/type, after a 7-byte file header
    ":W&B", key, version)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, out = Path(path).read_bytes(), 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or a record's last chunk
            out.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return out


def wandb_history(wandb_dir):
    """What the server holds once the offline-run folders are synced, oldest first: each
    continued run's rewind (resume_from) drops the steps after its branch point. -> (run ids,
    branch points, {name: {step: value}})."""
    ids, branches, history = [], [], {}
    for folder in sorted(Path(wandb_dir).glob("wandb/offline-run-*")):
        for record in wandb_records(next(folder.glob("*.wandb"))):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.append(record.run.run_id)
                if record.run.HasField("branch_point"):
                    branch = record.run.branch_point
                    branches.append((branch.run, branch.value))
                    history = {n: {s: v for s, v in p.items() if s <= branch.value}
                               for n, p in history.items()}
            elif kind == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                for name, value in row.items():
                    if not name.startswith(("_", "samples")):
                        points = history.setdefault(name, {})
                        assert row["_step"] not in points, f"{name} at step {row['_step']} twice"
                        points[row["_step"]] = value
    return ids, branches, history


def tensorboard_scalars(log_dir):
    """{name: [(step, value)]} as TensorBoard shows them (its reader applies purge_step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_same_points(shown, logged, what):
    assert shown.keys() == logged.keys(), what
    for name, points in logged.items():
        steps = [s for s, _ in shown[name]]
        assert steps == [s for s, _ in points], f"{what} {name}: steps {steps}"
        for (step, value), (_, logged_value) in zip(shown[name], points):
            assert math.isclose(value, logged_value, rel_tol=1e-6), f"{what} {name} at {step}"


def test_live_views_match_log_txt_across_a_kill(work):
    log_dir, wandb_dir = work["root"] / "live", work["root"] / "wandb_dir"
    # wandb writes its file every 15 s: a real run has logged step 0 long before its first
    # checkpoint, this one only if wandb writes at once
    env = dict(work["env"], WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_SILENT="true",
               WANDB__TRANSACTION_LOG_FLUSH_INTERVAL="0.01", WANDB__DISABLE_STATS="true",
               WANDB__DISABLE_META="true", WANDB__SAVE_REQUIREMENTS="false")
    args = [*FAST, "--data_dir", work["data"], "--log_dir", log_dir, "--tensorboard", "1",
            "--wandb", "tiny", "--sample_every", "2", "--num_samples", "2", "--sample_tokens", "4",
            "--target_val_loss", "20"]
    # killed once log.txt holds a training step at or past the last checkpoint: the continued run
    # re-does that step, and the live views must drop what the killed run showed of it
    code, first, _ = signal_run_when(env, args, work["root"] / "live.out",
                                     lambda: logged_past_checkpoint(log_dir),
                                     "a checkpoint and a record past it", signal.SIGKILL)
    assert code == -signal.SIGKILL, first
    assert "model_00004.pt" not in os.listdir(log_dir), "killed too late"
    assert "target reached: val" in first and " at step 0, " in first
    config = json.loads((log_dir / "config.json").read_text())
    run_id, reached = config["wandb_run_id"], config["targets"][0]["reached"]
    proc = ok(run_cli(env, *args))  # the same command continues the run
    start = int(re.search(r"continuing from .*model_(\d+)\.pt", proc.stdout).group(1))
    assert start > 0 and "target reached" not in proc.stdout

    logged = log_streams(log_dir)
    assert {"train", "val", "lr", "norm", "dt", "tok/s", "elapsed"} <= logged.keys()
    assert_same_points(tensorboard_scalars(log_dir), logged, "tensorboard")
    ids, branches, history = wandb_history(wandb_dir)
    assert set(ids) == {run_id} and branches == [(run_id, 0)]
    assert_same_points({n: sorted(p.items()) for n, p in history.items()}, logged, "wandb")

    # config.json keeps the W&B run and the target reached before the kill; the training time
    # (evaluations excluded) carries over the resume: the final checkpoint's is log.txt's sum
    config = json.loads((log_dir / "config.json").read_text())
    assert config["wandb_run_id"] == run_id and config["targets"][0]["reached"] == reached
    import torch
    final = torch.load(log_dir / "model_00004.pt", map_location="cpu", weights_only=True)
    assert abs(final["train_seconds"] - sum(v for _, v in logged["dt"]) / 1000) < 1e-3
