"""
Tests for the trainer, train_gpt2.py: CPU only, offline, a tiny model on small generated shards,
driven through the real command line (`python train_gpt2.py ...`, torchrun-style
`python -m torch.distributed.run`, or main(argv) in-process where a run never starts), plus the
loader, the schedule and the log-dir rules called directly.

What a user relies on, and where it is checked:
  * DDP on 2 processes (gloo) trains exactly like 1 process with twice the accumulation, with
    AdamW and with Muon (test_ddp_matches_single_process);
  * a run killed with SIGKILL, or stopped with SIGTERM, and resumed with --resume equals an
    uninterrupted run: same loss strings, samples and final weights, nothing logged twice
    (test_kill_and_resume_is_exact, test_sigterm_saves_exits_143_and_resumes_exactly);
  * every training token is a target once per epoch, epochs are reshuffled, and the data of a
    step does not depend on micro_batch / world size (test_loader_*); the validation set and its
    loss do not either (test_val_*);
  * bad input -> one line "error: ..." on stderr, exit code 1, no traceback, and no file of an
    earlier run changed (test_bad_*, test_muon_on_old_torch_*); under torchrun the error is
    printed once (test_error_under_torchrun_*); an out-of-memory names the micro_batch
    (test_out_of_memory_*); settings that would waste a run are warned about (test_settings_*);
  * no log line, sample or checkpoint is ever lost: finished runs, earlier logs, killed or failed
    checkpoint writes (a full disk, a Ctrl-C), a second run into the same log dir, divergence
    (test_finished_*, test_fresh_*, test_leftover_temp_*, test_failed_checkpoint_*,
    test_interrupt_during_*, test_a_second_run_*, test_nan_*);
  * a SIGTERM is answered within seconds even during an evaluation (test_sigterm_during_*), and
    under `torchrun --max-restarts=1` a killed rank's job restarts and the same command runs on to
    the end (test_killed_rank_*); a rank ends with its own exit code and all its output, never
    an abort in Python's shutdown (test_a_torchrun_rank_*);
  * Muon: its parameter groups cover every parameter once (test_muon_groups_*); config.json
    records the resolved settings and the optimizers (test_config_json_*); checkpoints load
    cleanly (test_checkpoints_*);
  * --compile 1, --export, --benchmark, --help, the run summary (test_compile_*, test_export_*,
    test_benchmark_*, test_help_*, test_run_ends_with_*); the LR schedule, the ETA, the device and
    dtype choice (test_lr_schedule_*, test_logged_lr_*, test_times_*, test_count_due_*,
    test_device_*).
"""

import collections
import contextlib
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt2 as tg
from helpers import (FIXTURE_HELLASWAG, MUON, REPO, RUN_TIMEOUT, SEQ_LEN, TINY, TRAIN_LENGTHS,
                     VAL_TOKENS, assert_one_error_line, checkpoints, cli_env, export_logit_gap, ok,
                     real_hellaswag_file, record_map, records, run_cli, state_dicts_equal,
                     train_cmd, work_dir, write_hellaswag_dir, write_shards)

COMPILE_TIMEOUT = 1500


# -----------------------------------------------------------------------------
# helpers


def start_cli(env, *args, out_path):
    out = open(out_path, "w")
    return subprocess.Popen(train_cmd(*args), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT), out


def snapshot(directory):
    """name -> (size, mtime_ns, inode, sha256 of the small files) of every file in a folder
    (recursively). Checkpoints (~40 MB each here) are not hashed: the trainer only ever replaces a
    file by renaming a new one over it, which changes its inode and mtime."""
    snap = {}
    for p in sorted(Path(directory).rglob("*")):
        if p.is_file():
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 1 << 20 else None
            snap[str(p.relative_to(directory))] = (st.st_size, st.st_mtime_ns, st.st_ino, digest)
    return snap


def assert_user_error(proc, *needles):
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    return assert_one_error_line(proc.stderr, proc.returncode, *needles)


def run_main(capsys, *argv):
    """main(argv) in this process, for command lines that fail before a run starts:
    -> (code, out, err)."""
    capsys.readouterr()  # only what main prints
    code = tg.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_optimizer_states(a, b):
    """Checkpoints hold the optimizers' state by parameter name, as one dict."""
    assert a["state"].keys() == b["state"].keys() \
        and len(a["param_groups"]) == len(b["param_groups"])
    for k in a["state"]:
        assert state_dicts_equal(a["state"][k], b["state"][k])


# -----------------------------------------------------------------------------
# shared fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    yield from work_dir(tmp_path_factory, "trainer")


def reference_args(data, log_dir, *extra):
    """The uninterrupted run the resume and DDP tests compare against: a checkpoint and 2
    samples at every step, so a resume re-does a step that already wrote samples."""
    return [*TINY, "--data_dir", data, "--log_dir", log_dir, "--shuffle", "1",
            "--checkpoint_every", "1", "--sample_every", "1", "--num_samples", "2",
            "--sample_tokens", "8", *extra]


@pytest.fixture(scope="module")
def reference(work):
    log_dir = work["root"] / "reference"
    proc = ok(run_cli(work["env"], *reference_args(work["data"], log_dir)))
    (work["root"] / "reference.out").write_text(proc.stdout)
    (work["root"] / "reference.err").write_text(proc.stderr)
    return log_dir


@pytest.fixture(scope="module")
def reference_muon(work):
    log_dir = work["root"] / "reference_muon"
    ok(run_cli(work["env"], *reference_args(work["data"], log_dir, *MUON)))
    return log_dir


@pytest.fixture(scope="module")
def finished(work, reference):
    """A private copy of a finished run's log dir, for the bad-input tests to (not) touch."""
    dst = work["root"] / "finished"
    shutil.copytree(reference, dst)
    return dst


# -----------------------------------------------------------------------------
# 1. DDP == single process with twice the accumulation


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_ddp_matches_single_process(work, reference, reference_muon, optimizer):
    single = reference if optimizer == "adamw" else reference_muon
    extra = MUON if optimizer == "muon" else []
    ddp = work["root"] / f"ddp_{optimizer}"
    proc = ok(run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", ddp, "--shuffle",
                      "1", *extra, ddp=True))
    # neither run prints a warning of torch's (DDP's deprecated broadcast_buffers did on 2.13)
    for stderr in (proc.stderr, (work["root"] / "reference.err").read_text()):
        assert "Warning" not in stderr, stderr[-3000:]

    # the two all-reduce the gradients in another order (fp32 rounding); Muon's Newton-Schulz runs
    # in bf16, which turns that rounding into ~1e-5 differences of the loss
    tol = 1e-5 if optimizer == "adamw" else 1e-4
    a, b = record_map(single), record_map(ddp)
    expected_keys = {(s, "train") for s in range(6)} | {(s, "val") for s in (0, 3, 6)}
    assert set(a) == expected_keys and set(b) == expected_keys
    for key in sorted(expected_keys):
        assert abs(float(a[key]) - float(b[key])) < tol, \
            f"{key}: 1 process {a[key]}, 2 processes {b[key]}"
    for log_dir in (single, ddp):  # every record once
        keys = [(s, n) for s, n, _ in records(log_dir)]
        assert len(keys) == len(set(keys))

    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2 and config["grad_accum_steps"] == 2
    assert json.loads((single / "config.json").read_text())["grad_accum_steps"] == 4
    # the same updates: the final weights equal the single process's (to that rounding; with Muon a
    # bf16 rounding flip moves an element by ~2**-8 of its update: compare each tensor's relative
    # difference)
    mine = torch.load(ddp / "model_00006.pt", map_location="cpu", weights_only=True)
    ref = torch.load(single / "model_00006.pt", map_location="cpu", weights_only=True)
    assert not [k for k in mine["model"] if k.startswith(("module.", "_orig_mod."))]
    for k in ref["model"]:
        if optimizer == "adamw":
            assert torch.allclose(mine["model"][k], ref["model"][k], atol=1e-5), k
        else:
            rel = ((mine["model"][k] - ref["model"][k]).norm() / ref["model"][k].norm()).item()
            assert rel < 1e-2, f"{k}: relative difference {rel:.1e}"
    assert checkpoints(ddp) == ["model_00006.pt"]


# -----------------------------------------------------------------------------
# 2. kill -9 or SIGTERM, then --resume == never interrupted


def logged_past_checkpoint(log_dir, steps_past=0):
    ckpts = checkpoints(log_dir)
    if not ckpts or not (log_dir / "log.txt").exists():
        return False
    # a record is complete once its line ends; the last line may be half-written
    lines = (log_dir / "log.txt").read_text().split("\n")[:-1]
    trained = [int(line.split()[0]) for line in lines if line.split()[1:2] == ["train"]]
    return bool(trained) and max(trained) >= int(ckpts[-1][6:11]) + steps_past


def wait_for(proc, condition, what):
    deadline = time.time() + RUN_TIMEOUT
    while not condition():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def signal_run_when(env, args, out_path, condition, what, signum, delay=0.0):
    """Start a run, send it `signum` once condition() holds (and `delay` more seconds), wait for
    it to end -> (exit code, its output, seconds from the signal to the end)."""
    proc, out = start_cli(env, *args, out_path=out_path)
    try:
        wait_for(proc, condition, what)
        time.sleep(delay)
        t0 = time.time()
        proc.send_signal(signum)
        proc.wait(timeout=120)
        return proc.returncode, Path(out_path).read_text(), time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        out.close()


def assert_resumed_run_equals(log_dir, reference, resumed_from):
    # every train/val record identical as a string, in the same order, and each once
    assert records(log_dir) == records(reference)
    all_keys = [(s, n) for s, n, _ in records(
        log_dir, names=("train", "val", "lr", "norm", "dt", "tok/s", "elapsed"))]
    duplicates = [k for k, c in collections.Counter(all_keys).items() if c > 1]
    assert not duplicates, f"records logged twice: {duplicates}"
    # samples: no step twice, and the same text as the uninterrupted run (same weights, same seeds)
    assert (log_dir / "samples.txt").read_text() == (reference / "samples.txt").read_text()
    # the final weights and optimizer states are bit-identical
    mine = torch.load(log_dir / "model_00006.pt", map_location="cpu", weights_only=True)
    ref = torch.load(reference / "model_00006.pt", map_location="cpu", weights_only=True)
    assert state_dicts_equal(mine["model"], ref["model"])
    assert_same_optimizer_states(mine["optimizer"], ref["optimizer"])
    # config.json records where the run was resumed from; elapsed keeps counting across it
    assert [os.path.basename(p) for p in json.loads(
        (log_dir / "config.json").read_text())["resumed_from"]] == [resumed_from]
    elapsed = [float(v) for _, _, v in records(log_dir, names=("elapsed",))]
    assert elapsed == sorted(elapsed)


def test_kill_and_resume_is_exact(work, reference):
    log_dir = work["root"] / "killed"
    args = reference_args(work["data"], log_dir)
    # kill once a checkpoint exists AND log.txt already holds a training record of a step at or
    # after it: the resume must then drop records (and samples) that it re-does
    code, _, _ = signal_run_when(work["env"], args, work["root"] / "killed.out",
                                 lambda: logged_past_checkpoint(log_dir),
                                 "a checkpoint and a record past it", signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert "model_00006.pt" not in checkpoints(log_dir), "killed too late to test anything"
    killed_at = checkpoints(log_dir)[-1]
    proc = ok(run_cli(work["env"], *args))  # the same command continues the run
    assert f"continuing from {log_dir / killed_at}" in proc.stdout
    assert_resumed_run_equals(log_dir, reference, killed_at)


def test_sigterm_saves_exits_143_and_resumes_exactly(work, reference_muon):
    """SIGTERM (a preempted job): finish the step, save, exit 128+15 so `train && next` stops;
    --resume then continues exactly, here with Muon's state in the checkpoint too."""
    log_dir = work["root"] / "sigterm_muon"
    args = reference_args(work["data"], log_dir, *MUON)
    code, text, _ = signal_run_when(work["env"], args, work["root"] / "sigterm.out",
                                    lambda: logged_past_checkpoint(log_dir),
                                    "a training record", signal.SIGTERM)
    assert code == 128 + signal.SIGTERM, text[-3000:]
    assert "run the same command again to continue" in text and "Traceback" not in text
    stopped_at = checkpoints(log_dir)[-1]
    assert stopped_at != "model_00006.pt", "stopped too late to test anything"
    ckpt = torch.load(log_dir / stopped_at, map_location="cpu", weights_only=True)
    assert len(ckpt["optimizer"]["param_groups"]) == 3  # AdamW's two and Muon's
    assert ckpt["evals_done"] is False  # its evaluations run after the resume
    ok(run_cli(work["env"], *args))
    assert_resumed_run_equals(log_dir, reference_muon, stopped_at)


def test_sigterm_during_an_evaluation_is_answered_at_once(work):
    """The full HellaSwag val set takes minutes on a CPU; a SIGTERM during it stops within
    seconds, saves the step (its evaluations to be redone) and logs no partial result."""
    if real_hellaswag_file() == FIXTURE_HELLASWAG:
        pytest.skip("needs the real HellaSwag val file")
    log_dir = work["root"] / "sigterm_eval"
    env = cli_env(write_hellaswag_dir(work["root"] / "hellaswag_2000", n=2000))
    args = [*TINY, "--data_dir", work["data"], "--log_dir", log_dir, "--hellaswag_every", "3"]
    code, text, answered = signal_run_when(
        env, args, work["root"] / "sigterm_eval.out",
        lambda: (log_dir / "log.txt").exists() and (0, "val") in record_map(log_dir),
        "the step-0 validation", signal.SIGTERM, delay=0.5)  # HellaSwag is running by then
    assert code == 143, text[-3000:]
    assert answered < 30, \
        f"took {answered:.1f} s to stop (the whole eval: about 60 s on a quiet 2-core machine)"
    assert checkpoints(log_dir) == ["model_00000.pt"]
    assert (0, "hella") not in record_map(log_dir, names=("hella",))
    assert torch.load(log_dir / "model_00000.pt", map_location="cpu",
                      weights_only=True)["evals_done"] is False


def test_killed_rank_is_restarted_and_the_run_continues_to_its_end(work):
    """A rank SIGKILLed mid-run under `torchrun --max-restarts=1`: torchrun stops the job, starts
    it again, and the same command continues from the last checkpoint to the end; nothing is
    logged twice and the checkpoints written before the kill are untouched."""
    log_dir = work["root"] / "dead_rank"
    args = [*TINY, "--data_dir", work["data"], "--log_dir", log_dir, "--max_steps", "24",
            "--val_every", "0", "--checkpoint_every", "4"]
    out_path = work["root"] / "dead_rank.out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--max-restarts=1",
           "--nproc_per_node=2", "train_gpt2.py", *map(str, args)]
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=work["env"], stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            wait_for(proc, lambda: logged_past_checkpoint(log_dir, steps_past=2), "a checkpoint")
            rank1 = [pid for pid in worker_pids(proc.pid) if worker_rank(pid) == 1]
            assert rank1, "no rank-1 worker found"
            before = {k: v for k, v in snapshot(log_dir).items() if k.startswith("model_")}
            os.kill(rank1[0], signal.SIGKILL)
            proc.wait(timeout=RUN_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = out_path.read_text()
    assert proc.returncode == 0, text[-5000:]
    assert "continuing from" in text and "done: 24 steps" in text
    after = snapshot(log_dir)
    assert all(after[name] == v for name, v in before.items()), \
        "a checkpoint written before the kill changed"
    steps = [s for s, n, _ in records(log_dir, names=("train",))]
    assert steps == list(range(24)), "a step is missing or logged twice"


def worker_pids(parent):
    found = []
    for child in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (child / "stat").read_text().rsplit(")", 1)[1].split()[1] == str(parent):
                found.append(int(child.name))
    return found


def worker_rank(pid):
    with contextlib.suppress(OSError):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for item in env:
            if item.startswith(b"RANK="):
                return int(item[5:])
    return None


# -----------------------------------------------------------------------------
# 3. the train loader, in-process: epochs, shuffling, independence from the batch layout


def position_stream(tmp_path, lengths, split="train"):
    """Shards whose token values say where they are: 1000 * shard + offset."""
    paths = []
    for s, n in enumerate(lengths):
        p = tmp_path / f"pos_{split}_{s:06d}.npy"
        np.save(p, (1000 * s + np.arange(n)).astype(np.uint16))
        paths.append(str(p))
    return tg.TokenStream(paths)


LOADER_LENGTHS = (101, 57, 230, 7)  # 395 tokens; one shard shorter than a window
LOADER_SEQ = 8


def make_loader(stream, seed=1337, shuffle=True, seqs_per_step=8, micro_batch=8, rank=0,
                world_size=1):
    return tg.TrainLoader(stream, LOADER_SEQ, seed, shuffle, seqs_per_step=seqs_per_step,
                          micro_batch=micro_batch, rank=rank, world_size=world_size)


def epoch_windows(loader, epoch):
    n = loader.n_windows
    return [tuple(int(t) for t in loader.window(g)) for g in range(epoch * n, (epoch + 1) * n)]


def check_epoch_covers_stream(windows, lengths, seq_len):
    total = sum(lengths)
    shard_len = dict(enumerate(lengths))
    for w in windows:  # contiguous: next offset in the same shard, or offset 0 of another shard
        assert len(w) == seq_len + 1
        for a, b in zip(w, w[1:]):
            same_shard = b == a + 1 and b // 1000 == a // 1000
            shard_change = (a % 1000 == shard_len[a // 1000] - 1 and b % 1000 == 0
                            and b // 1000 != a // 1000)
            assert same_shard or shard_change, f"window is not contiguous at {a} -> {b}: {w}"
    targets = [t for w in windows for t in w[1:]]
    assert len(targets) == len(set(targets)), "a token is a target twice in one epoch"
    everything = {1000 * s + o for s, n in enumerate(lengths) for o in range(n)}
    missing = everything - set(targets)
    # left out: the stream's first token (never a target) and its last (total-1) % seq_len tokens
    tail = (total - 1) % seq_len
    assert len(missing) == 1 + tail
    starts = [t for t in missing if t % 1000 == 0]
    assert len(starts) == 1
    ends = sorted(missing - set(starts))
    s = ends[0] // 1000
    assert ends == [1000 * s + o for o in range(lengths[s] - tail, lengths[s])], \
        "left-out tokens are not the stream's end"


def test_loader_epochs_cover_every_token_once_and_reshuffle(tmp_path):
    loader = make_loader(position_stream(tmp_path, LOADER_LENGTHS))
    assert loader.n_windows == (sum(LOADER_LENGTHS) - 1) // LOADER_SEQ
    epochs = [epoch_windows(loader, e) for e in range(3)]
    for windows in epochs:
        check_epoch_covers_stream(windows, LOADER_LENGTHS, LOADER_SEQ)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2], \
        "two epochs visit the windows in the same order"
    assert sorted(epochs[0]) != epochs[0], "shuffle 1 left the windows in stream order"
    # the order is a function of (seed, epoch) only: a resumed run rebuilds it, any epoch first
    again = make_loader(position_stream(tmp_path, LOADER_LENGTHS))
    assert epoch_windows(again, 2) == epochs[2] and epoch_windows(again, 0) == epochs[0]
    assert epoch_windows(make_loader(loader.stream, seed=7), 0) != epochs[0]


def test_loader_without_shuffle_repeats_stream_order(tmp_path):
    loader = make_loader(position_stream(tmp_path, LOADER_LENGTHS), shuffle=False)
    flat = np.concatenate([np.load(p) for p in loader.stream.paths]).astype(int)
    in_order = [tuple(flat[i * LOADER_SEQ: i * LOADER_SEQ + LOADER_SEQ + 1])
                for i in range(loader.n_windows)]
    e0, e1 = epoch_windows(loader, 0), epoch_windows(loader, 1)
    check_epoch_covers_stream(e0, LOADER_LENGTHS, LOADER_SEQ)
    assert e0 == in_order and e1 == in_order


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_step_data_independent_of_layout(tmp_path, shuffle):
    """The sequences of a global step are the same set for any world size / micro_batch (the
    runs differ only in who reads which), including a step that straddles an epoch end."""
    stream = position_stream(tmp_path, LOADER_LENGTHS)
    seqs_per_step = 8  # total_batch = 64 tokens; n_windows = 49, so step 6 crosses into epoch 1
    # (world, micro_batch)
    layouts = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (4, 1), (4, 2), (8, 1)]
    reference = make_loader(stream, seed=3, shuffle=shuffle)
    for step in range(8):
        expected = sorted(tuple(int(t) for t in reference.window(g))
                          for g in range(step * seqs_per_step, (step + 1) * seqs_per_step))
        for world, micro_batch in layouts:
            rows = []
            for rank in range(world):
                loader = make_loader(stream, seed=3, shuffle=shuffle, micro_batch=micro_batch,
                                     rank=rank, world_size=world)
                for micro_step in range(seqs_per_step // (world * micro_batch)):
                    x, y = loader.batch(step, micro_step)
                    # pinned copies need a contiguous source
                    assert x.is_contiguous() and y.is_contiguous()
                    assert torch.equal(x[:, 1:], y[:, :-1])
                    rows += [tuple(r) + (int(t),) for r, t in zip(x.tolist(), y[:, -1].tolist())]
            assert sorted(rows) == expected, \
                f"step {step}: world {world} x micro_batch {micro_batch} reads other data"
            assert len(set(rows)) == seqs_per_step, "two ranks/micro-steps read the same sequence"


# -----------------------------------------------------------------------------
# 4. the validation set


def test_val_set_is_first_val_tokens(tmp_path):
    stream = position_stream(tmp_path, (40, 77), split="val")
    flat = np.concatenate([np.load(p) for p in stream.paths]).astype(int)
    for val_tokens, n_windows in ((50, 6), (48, 6), (47, 5), (10**6, (117 - 1) // 8)):
        vs = tg.ValSet(stream, 8, val_tokens)
        assert vs.n_windows == n_windows
        got = vs.windows(range(vs.n_windows)).astype(int)
        want = np.stack([flat[k * 8: k * 8 + 9] for k in range(n_windows)])
        assert np.array_equal(got, want)
        assert n_windows * 8 <= val_tokens, "the val set reads past val_tokens"


def test_val_loss_independent_of_micro_batch_and_world(tmp_path, monkeypatch):
    stream = position_stream(tmp_path, (40, 77), split="val")
    vs = tg.ValSet(stream, 8, 100)  # 12 windows: short last batches get padded
    torch.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(block_size=16, vocab_size=2048, n_layer=1, n_head=2, n_embd=16))
    x, y = tg.to_batch(vs.windows(range(vs.n_windows)))
    with torch.no_grad():
        _, direct = model(x, y)
    cpu, amp = torch.device("cpu"), contextlib.nullcontext()
    reduced = []  # what each rank hands to the all-reduce: (loss sum, token count)
    monkeypatch.setattr(tg, "all_reduce", lambda t, op=None: reduced.append(t.clone()) or t)
    for micro_batch in (1, 3, 4, 5, 12, 16):
        got = tg.evaluate_val(model, vs, micro_batch, cpu, amp)
        assert abs(got - direct.item()) < 1e-6, \
            f"micro_batch {micro_batch}: {got} vs {direct.item()}"
        for world in (2, 5):
            reduced.clear()
            calls = []
            for rank in range(world):
                stops = []
                tg.evaluate_val(model, vs, micro_batch, cpu, amp, rank, world,
                                should_stop=lambda: stops.append(1) or False)
                calls.append(len(stops))
            loss_sum, count = torch.stack(reduced).sum(0).tolist()
            assert count == vs.n_windows * 8
            assert abs(loss_sum / count - direct.item()) < 1e-6, \
                f"world {world} x micro_batch {micro_batch}"
            assert len(set(calls)) == 1, \
                f"ranks asked whether to stop {calls} times: a collective would hang"
    assert model.training, "evaluate_val must leave the model in training mode"
    assert tg.evaluate_val(model, vs, 1, cpu, amp, should_stop=lambda: True) is None
    assert model.training


# -----------------------------------------------------------------------------
# 5. bad input: one line, exit 1, nothing touched


def test_bad_flags_one_line_each(capsys, tmp_path):
    """Every flag is checked before any work (in-process main(argv): the real parser and checks)."""
    base = [*TINY, "--data_dir", tmp_path / "no_data", "--log_dir", tmp_path / "log"]
    cases = [
        (["--n_embd", "65"], "not divisible"), (["--n_head", "3"], "not divisible"),
        (["--n_head", "0"], "--n_head"), (["--n_layer", "0"], "--n_layer"),
        (["--n_layer", "-1"], "--n_layer"), (["--block_size", "0"], "--block_size"),
        (["--max_lr", "-1"], "--max_lr"), (["--max_lr", "nan"], "--max_lr"),
        (["--max_lr", "0"], "--max_lr"), (["--seed", "-1"], "--seed"),
        (["--num_samples", "-1"], "--num_samples"), (["--device", "tpu"], "tpu"),
        (["--device", "cuda:5"], "cuda:5"), (["--min_lr_ratio", "2"], "--min_lr_ratio"),
        (["--grad_clip", "-1"], "--grad_clip"), (["--weight_decay", "-1"], "--weight_decay"),
        (["--hellaswag_limit", "0"], "--hellaswag_limit"), (["--val_tokens", "0"], "--val_tokens"),
        (["--vocab_size", "100"], "50257"), (["--muon_lr", "0.01"], "--optimizer muon"),
        (["--optimizer", "muon", "--muon_lr", "inf"], "--muon_lr"),
        (["--arch", "modern", "--n_embd", "66", "--n_head", "2"], "even head size"),
        (["--total_batch", "192", "--micro_batch", "4"], "1, 2, 3, 6"),
        (["--seq_len", "128"], "block size"), (["--max_steps", "x"], "--max_steps"),
        (["--arch", "llama"], "--arch"),
    ]
    for extra, needle in cases:
        code, out, err = run_main(capsys, *base, *extra)
        assert_one_error_line(err, code, needle)
    assert not (tmp_path / "log").exists(), "a refused start created the log dir"


def test_muon_on_old_torch_says_which_torch_it_needs(capsys, tmp_path, monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    code, _, err = run_main(capsys, *TINY, "--optimizer", "muon", "--log_dir", tmp_path)
    assert_one_error_line(err, code, "torch >= 2.9", torch.__version__)


# (case, extra args, substrings of the error line); "{finished}" etc. are filled in below.
RESUMABLE_ERRORS = [
    ("missing_data_dir", ["--resume", "--data_dir", "{root}/no_such_dir"], ["does not exist"]),
    ("empty_data_dir", ["--resume", "--data_dir", "{bad_empty}"], ["train", "npy"]),
    ("int32_shard", ["--resume", "--data_dir", "{bad_int32}"],
     ["tiny_train_000000.npy", "int32", "uint16"]),
    ("garbage_npy", ["--resume", "--data_dir", "{bad_garbage}"],
     ["tiny_train_000001.npy", "not a readable"]),
    ("token_past_gpt2_vocab", ["--resume", "--data_dir", "{bad_token}"],
     ["tiny_train_000002.npy", "50300", "GPT-2"]),
    ("same_command_other_schedule", [],
     ["other settings", "max_steps 6 -> 7", "--log_dir", "--resume"]),
    ("same_command_other_lr", ["--max_steps", "6", "--max_lr", "1e-3"],
     ["max_lr 0.0006 -> 0.001", "--log_dir"]),
    ("total_batch_not_divisible", ["--resume", "--micro_batch", "4", "--total_batch", "192"],
     ["192", "1, 2, 3, 6"]),
    ("resume_other_settings", ["--resume", "--n_embd", "32", "--seed", "7"],
     ["n_embd 64 -> 32", "seed 1337 -> 7"]),
    ("resume_other_optimizer", ["--resume", "--optimizer", "muon"], ["optimizer adamw -> muon"]),
    ("resume_missing_path", ["--resume", "{finished}/model_00099.pt"], ["model_00099.pt"]),
    ("resume_text_file", ["--resume", "{root}/notes.txt"], ["notes.txt", "not a checkpoint"]),
    ("resume_empty_file", ["--resume", "{root}/empty.pt"], ["empty.pt", "empty (0 bytes)"]),
    ("log_dir_is_a_file", ["--log_dir", "{root}/notes.txt"], ["is a file"]),
    ("bad_hellaswag_row", ["--resume", "--hellaswag_every", "1"],
     ["hellaswag_val.jsonl", "line 2"]),
]


@pytest.fixture(scope="module")
def bad_data(work):
    root = work["root"]
    dirs = {name: write_shards(root / f"bad_{name}") for name in ("int32", "garbage", "token")}
    dirs["empty"] = root / "bad_empty"
    dirs["empty"].mkdir(exist_ok=True)
    arr = np.load(dirs["int32"] / "tiny_train_000000.npy").astype(np.int32)
    np.save(dirs["int32"] / "tiny_train_000000.npy", arr)
    (dirs["garbage"] / "tiny_train_000001.npy").write_bytes(b"\x93NUMPY garbage, not an array")
    arr = np.load(dirs["token"] / "tiny_train_000002.npy")
    arr[-1] = 50300  # inside the padded vocab, not a GPT-2 token, and read last of all
    np.save(dirs["token"] / "tiny_train_000002.npy", arr)
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "empty.pt").write_bytes(b"")
    rows = (real_hellaswag_file().read_text(encoding="utf-8").splitlines(keepends=True))[:3]
    rows[1] = json.dumps({"ctx": "x", "endings": ["a", "b", "c"], "label": 0}) + "\n"
    dirs["hellaswag"] = write_hellaswag_dir(root / "bad_hellaswag", lines=rows)
    return dirs


@pytest.mark.parametrize("case,extra,needles", RESUMABLE_ERRORS,
                         ids=[c[0] for c in RESUMABLE_ERRORS])
def test_bad_input_leaves_finished_run_untouched(work, finished, bad_data, case, extra, needles,
                                                 capsys, monkeypatch):
    fill = ({"root": work["root"], "finished": finished}
            | {f"bad_{k}": v for k, v in bad_data.items()})
    extra = [a.format(**fill) for a in extra]
    monkeypatch.setenv("HELLASWAG_DIR", str(
        bad_data["hellaswag"] if case == "bad_hellaswag_row" else work["hellaswag"]))
    before = snapshot(finished)
    # --max_steps 7: past the finished run's end, so the resume would train if nothing stopped it
    code, out, err = run_main(capsys, *reference_args(work["data"], finished), "--max_steps", "7",
                              *extra)
    assert_one_error_line(err, code, *needles)
    assert snapshot(finished) == before, "a failed start changed the finished run's files"


def test_bad_input_resume_without_checkpoint(work, capsys):
    log_dir = work["root"] / "crashed_before_checkpoint"
    log_dir.mkdir()
    (log_dir / "log.txt").write_text("0 val 10.8\n0 train 10.9\n")
    before = snapshot(log_dir)
    code, _, err = run_main(capsys, *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                            "--resume")
    assert_one_error_line(err, code, "no checkpoint")
    assert snapshot(log_dir) == before


def test_error_under_torchrun_is_printed_once(work):
    proc = run_cli(work["env"], *TINY, "--data_dir", work["data"],
                   "--log_dir", work["root"] / "ddp_err", "--vocab_size", "100", ddp=True)
    assert proc.returncode != 0
    errors = [line for line in (proc.stdout + proc.stderr).splitlines()
              if line.startswith("error:")]
    assert len(errors) == 1 and "50257" in errors[0], proc.stderr[-3000:]


# --- lost or clobbered work


def test_finished_run_run_again_says_so_and_changes_nothing(work, finished, capsys):
    """The same command after the end (with or without --resume): exit 0, one line, no file
    touched."""
    before = snapshot(finished)
    for extra in ([], ["--resume"]):
        code, out, err = run_main(capsys, *reference_args(work["data"], finished), *extra)
        assert code == 0 and err == ""
        assert "nothing to do" in out and "model_00006.pt" in out and "--max_steps" in out
    assert snapshot(finished) == before


def test_fresh_run_keeps_the_logs_of_an_earlier_one(work):
    """A crashed run without checkpoints: the next run starts over and keeps the old files,
    renamed after the time they were last written, beside those of an earlier crash."""
    log_dir = work["root"] / "earlier_logs"
    log_dir.mkdir()
    # set aside after a first crash
    (log_dir / "log.20010909-014640.txt").write_text("0 train 1.0\n")
    (log_dir / "log.txt").write_text("0 train 2.0\n")
    (log_dir / "samples.txt").write_text('0 sample0 "run 2"\n')
    for name, t in (("log.txt", 1e9 + 7200), ("samples.txt", 1e9)):  # the newest time names them
        os.utime(log_dir / name, (t, t))
    proc = ok(run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                      "--max_steps", "1", "--sample_every", "1", "--num_samples", "1",
                      "--sample_tokens", "4"))
    assert "note: an earlier run left logs without checkpoints" in proc.stdout
    kept = sorted(p.name for p in log_dir.glob("log.*.txt"))
    assert len(kept) == 2, kept
    assert sorted((log_dir / k).read_text() for k in kept) == ["0 train 1.0\n", "0 train 2.0\n"]
    assert [p.read_text() for p in log_dir.glob("samples.*.txt")] == ['0 sample0 "run 2"\n']
    # the new run's own samples only
    assert (log_dir / "samples.txt").read_text().startswith("1 sample0 ")
    assert (log_dir / "log.txt").read_text().startswith("0 val ")


def test_leftover_temp_of_a_killed_checkpoint_write_is_reused(work, reference):
    """A checkpoint write killed half-way leaves model.pt.tmp (up to 1.5 GB): the next checkpoint
    is written through the same name, so nothing accumulates."""
    log_dir = work["root"] / "stale_tmp"
    shutil.copytree(reference, log_dir)
    (log_dir / "model.pt.tmp").write_bytes(b"x" * 1000)
    ok(run_cli(work["env"], *reference_args(work["data"], log_dir), "--resume", "--max_steps", "7"))
    assert not (log_dir / "model.pt.tmp").exists()
    assert checkpoints(log_dir)[-1] == "model_00007.pt"
    # --resume changed the schedule on purpose: config.json says when, from what, to what
    changes = json.loads((log_dir / "config.json").read_text())["setting_changes"]
    assert changes == [{"step": 6, "setting": "max_steps", "old": 6, "new": 7}]
    assert not list(log_dir.glob("*.tmp"))


def test_failed_checkpoint_write_keeps_earlier_ones_and_says_so(work, capsys, monkeypatch):
    """A full disk during the second checkpoint: one error line, the first checkpoint and the
    logs intact, no temp file left."""
    log_dir = work["root"] / "disk_full"
    real_save = torch.save
    calls = []

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed, unexpected pos 64")
        real_save(obj, path)

    monkeypatch.setattr(tg.torch, "save", save)
    code, _, err = run_main(capsys, *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                            "--checkpoint_every", "2")
    assert_one_error_line(err, code, "cannot write checkpoint", "model_00004.pt",
                          "file write failed", "intact")
    assert checkpoints(log_dir) == ["model_00002.pt"] and not list(log_dir.glob("*.tmp"))
    assert torch.load(log_dir / "model_00002.pt", map_location="cpu",
                      weights_only=True)["step"] == 2


def test_interrupt_during_a_checkpoint_write_is_one_line_and_keeps_the_earlier_one(
        work, capsys, monkeypatch):
    """A second Ctrl-C lands while the second checkpoint is being written: one line, exit 130,
    the first checkpoint whole and no temp file left."""
    log_dir = work["root"] / "ctrl_c"
    real_save = torch.save

    def save(obj, path):
        if Path(path).parent == log_dir and list(log_dir.glob("model_*.pt")):
            Path(path).write_bytes(b"partial")
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(tg.torch, "save", save)
    code, _, err = run_main(capsys, *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                            "--checkpoint_every", "2")
    assert code == 130 and err.count("\n") == 1 and err.startswith("error: interrupted"), err
    assert checkpoints(log_dir) == ["model_00002.pt"] and not list(log_dir.glob("*.tmp"))


def test_settings_that_would_silently_waste_a_run_are_warned_about(work, capsys):
    log_dir = work["root"] / "warnings"
    code, out, err = run_main(capsys, *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                              "--max_steps", "2", "--warmup_steps", "2", "--val_every", "2",
                              "--val_tokens", "100000")
    assert code == 0
    assert "warning: --warmup_steps 2 >= --max_steps 2: the LR never reaches its peak" in err
    assert ("warning: --val_tokens 100,000 is more than the val shards hold; "
            "validating on all 4,992") in out


def test_out_of_memory_is_one_line_naming_the_micro_batch(work, capsys, monkeypatch):
    log_dir = work["root"] / "oom"

    def forward(self, idx, targets=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.53 GiB")

    monkeypatch.setattr(tg.GPT, "forward", forward)
    code, _, err = run_main(capsys, *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
                            "--val_every", "0")
    assert_one_error_line(err, code, "out of memory at --micro_batch 2", "cpu",
                          "--micro_batch values that divide --total_batch: 1, 2, 4, 8")
    assert not checkpoints(log_dir)


def test_a_second_run_into_the_same_log_dir_is_refused(work, finished):
    """Two runs started into one --log_dir would interleave their logs and checkpoints: while a
    run holds the log dir (here this test process holds its lock), the same command is refused
    with one line and writes nothing. (That a killed run leaves no stale lock, the kill tests
    show: the same command continues after a SIGKILL.)"""
    log_dir = work["root"] / "locked"
    shutil.copytree(finished, log_dir)
    tg.lock_log_dir(str(log_dir))
    before = snapshot(log_dir)
    args = reference_args(work["data"], log_dir, "--max_steps", "7", "--resume")  # would train on
    assert_user_error(run_cli(work["env"], *args), "another run is writing to", str(log_dir))
    assert snapshot(log_dir) == before


# --- NaN / inf: a huge learning rate after good checkpoints were saved


def test_nan_loss_stops_without_touching_checkpoints(work, reference):
    log_dir = work["root"] / "nan_run"
    shutil.copytree(reference, log_dir)
    before = {n: v for n, v in snapshot(log_dir).items() if n.startswith("model_")}
    # resume at step 2 with samples due every step; update 2 with lr 1e30 leaves NaN weights
    proc = run_cli(work["env"], *reference_args(work["data"], log_dir),
                   "--resume", log_dir / "model_00002.pt", "--max_lr", "1e30")
    line = assert_user_error(proc).lower()
    assert any(word in line for word in ("nan", "inf", "finite", "diverg")), \
        f"unclear message: {line}"
    after = {n: v for n, v in snapshot(log_dir).items() if n.startswith("model_")}
    # those past step 2 belong to the timeline that --resume left: renamed (test_timelines.py),
    # each file as it was (size, mtime, inode)
    assert sorted(after.values()) == sorted(before.values()), \
        "a diverged run wrote or changed a checkpoint"


# -----------------------------------------------------------------------------
# 6. config.json, checkpoints, export, summary


def test_config_json_holds_resolved_config(work, reference, reference_muon):
    config = json.loads((reference / "config.json").read_text())
    for dest in (set(vars(tg.get_args([])))
                 - {"benchmark", "steps", "export", "export_dir", "resume"}):
        assert dest in config, f"config.json lacks the argument {dest}"
    assert config["command"].startswith("train_gpt2.py --n_layer 2") and "git_commit" in config
    assert config["ended_at"] and config["setting_changes"] == []
    assert config["micro_batch"] == 2 and config["total_batch"] == 256 \
        and config["seq_len"] == SEQ_LEN
    assert config["world_size"] == 1 and config["grad_accum_steps"] == 256 // (2 * SEQ_LEN)
    cfg = tg.GPTConfig(**config["model_config"])  # round-trips
    assert asdict(cfg) == asdict(tg.GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64))
    assert config["n_params"] == tg.GPT(cfg).num_params()
    assert config["tokens_per_step"] == 256 and config["train_tokens"] == sum(TRAIN_LENGTHS)
    assert config["val_tokens_used"] == VAL_TOKENS // SEQ_LEN * SEQ_LEN
    assert config["device_name"] == "cpu" and config["n_gpus"] == 0 and config["resumed_from"] == []
    assert config["torch_version"] == torch.__version__
    assert config["optimizer"] == "adamw" and set(config["optimizer_settings"]) == {"adamw"}
    assert config["optimizer_settings"]["adamw"]["params"] == config["n_params"]
    muon = json.loads((reference_muon / "config.json").read_text())
    settings = muon["optimizer_settings"]
    assert settings["muon"]["lr"] == 0.01 and settings["muon"]["adjust_lr_fn"] == "match_rms_adamw"
    assert settings["adamw"]["params"] + settings["muon"]["params"] == muon["n_params"]


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_muon_groups_cover_every_parameter_once(arch):
    model = tg.GPT(tg.GPTConfig(arch=arch, block_size=64, n_layer=2, n_head=2, n_embd=64))
    args = tg.get_args(["--optimizer", "muon", "--arch", arch])
    tg.resolve_defaults(args, 1)
    (adamw, muon), _ = tg.configure_optimizers(model, args, "cpu")
    ids = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    blocks_2d = {n for n, p in model.named_parameters()
                 if n.startswith("transformer.h.") and p.dim() == 2}
    # the embeddings and the tied head: AdamW
    assert in_muon == blocks_2d and "transformer.wte.weight" not in in_muon
    no_decay = {names[id(p)] for p in adamw.param_groups[1]["params"]}
    assert all(dict(model.named_parameters())[n].dim() == 1 for n in no_decay)


def test_checkpoints_are_clean_and_loadable(reference):
    names = checkpoints(reference)
    assert names == [f"model_{s:05d}.pt" for s in range(1, 7)]
    final = None
    for name in names:
        ckpt = torch.load(reference / name, map_location="cpu", weights_only=True)
        assert ckpt["step"] == int(name[6:11]) and ckpt["evals_done"] is True
        assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]
        assert tg.GPTConfig(**ckpt["config"]) == tg.GPTConfig(
            block_size=64, n_layer=2, n_head=2, n_embd=64)
        assert ckpt["args"]["seq_len"] == SEQ_LEN and len(ckpt["optimizer"]["param_groups"]) == 2
        final = ckpt
    model = tg.GPT(tg.GPTConfig(**final["config"]))
    model.load_state_dict(final["model"])  # strict: the names are the module's own


def test_run_ends_with_a_summary_line(work, reference):
    last = (work["root"] / "reference.out").read_text().splitlines()[-1]
    final_val = record_map(reference)[(6, "val")]
    assert last.startswith("done: 6 steps, ") and f"final val loss {final_val}" in last
    assert str(reference / "model_00006.pt") in last


def test_export_loads_in_transformers_with_same_logits(work, reference, capsys):
    ckpt = reference / "model_00006.pt"
    out = work["root"] / "exported_hf"
    code, printed, _ = run_main(capsys, "--export", ckpt, "--export_dir", out)
    assert code == 0 and str(out) in printed and "GPT2LMHeadModel" in printed
    gap, shape = export_logit_gap(ckpt, out)
    assert shape == (2, 40, tg.GPT2_VOCAB)
    assert gap < 1e-4
    code, _, err = run_main(capsys, "--export", ckpt, "--export_dir", work["root"] / "notes.txt")
    assert_one_error_line(err, code, "is a file")


# -----------------------------------------------------------------------------
# 7. --benchmark, --compile, --help


def test_benchmark_prints_one_json_line(work):
    proc = ok(run_cli(work["env"], *TINY, *MUON, "--log_dir", work["root"] / "bench_unused",
                      "--benchmark", "--steps", "3"))
    results = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                results.append(obj)
    assert len(results) == 1, proc.stdout[-3000:]
    r = results[0]
    for key in ("tokens_per_s", "mfu", "peak_mem_gib", "compile_s", "gpu", "step_ms", "world_size",
                "n_params"):
        assert key in r, f"benchmark JSON lacks {key}"
    assert r["tokens_per_s"] > 0 and r["mfu"] is None and r["gpu"] == "cpu" and r["steps"] == 3
    assert r["optimizer"] == "muon" and r["arch"] == "modern"
    assert math.isclose(r["tokens_per_s"], r["total_batch"] / (r["step_ms"] / 1000), rel_tol=0.01)
    assert not (work["root"] / "bench_unused").exists()


def test_compile_runs_on_cpu_with_val_hellaswag_and_samples(work, reference):
    """Slow (inductor compiles a few graphs on 2 cores); kept small, but always run."""
    log_dir = work["root"] / "compiled"
    ok(run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", log_dir,
               "--shuffle", "1", "--compile", "1", "--max_steps", "2", "--val_every", "1",
               "--hellaswag_every", "2", "--hellaswag_limit", "8", "--sample_every", "2",
               "--num_samples", "2", "--sample_tokens", "8", timeout=COMPILE_TIMEOUT))
    got = record_map(log_dir, names=("train", "val", "hella", "hella_acc"))
    assert {(s, "train") for s in (0, 1)} <= set(got)
    for step in (0, 2):
        assert (step, "val") in got and (step, "hella") in got
        assert 0.0 <= float(got[(step, "hella")]) <= 1.0
    assert (log_dir / "samples.txt").read_text().splitlines()[0].startswith("2 sample0 ")
    assert json.loads((log_dir / "config.json").read_text())["compile_resolved"] is True
    # same init, data and first LRs as the eager reference run: compile must not change the math
    ref = record_map(reference)
    for key in ((0, "val"), (0, "train"), (1, "train")):
        assert abs(float(got[key]) - float(ref[key])) < 1e-4, \
            f"{key}: compiled {got[key]}, eager {ref[key]}"


def test_help_texts_and_one_default_each():
    text = subprocess.run([sys.executable, "train_gpt2.py", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=120).stdout
    options = text.split("options:", 1)[1]
    entries = [e for e in __import__("re").split(r"\n  (?=-)", options)
               if e.strip().startswith("-")]
    parser_defaults = vars(tg.get_args([]))
    assert len(entries) >= len(parser_defaults)
    for entry in entries:
        flag = entry.split()[0].rstrip(",")
        assert len(entry.split("\n", 1)[0].split()) > 2 or "\n" in entry, f"{flag} has no help text"
        assert entry.count("default") <= 1, f"{flag} shows more than one default:\n{entry}"
        dest = flag.lstrip("-")
        if parser_defaults.get(dest) not in (None, False):
            assert "default" in entry, f"{flag} does not show its default"


# -----------------------------------------------------------------------------
# 8. the schedule, the ETA and devices


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    warmup, max_steps, floor = 10, 100, 0.1
    f = [tg.lr_factor(s, warmup, max_steps, floor) for s in range(max_steps + 5)]
    assert f[0] == pytest.approx(1 / warmup) and f[warmup - 1] == pytest.approx(1.0) == f[warmup]
    assert all(a < b for a, b in zip(f[:warmup], f[1:warmup]))  # rising
    assert all(b <= a for a, b in zip(f[warmup:], f[warmup + 1:]))  # then never rising
    # a cosine: half-way at mid-decay
    assert f[(warmup + max_steps) // 2] == pytest.approx((1 + floor) / 2)
    assert all(v == pytest.approx(floor) for v in f[max_steps:])
    # no warmup, no division by zero
    assert tg.lr_factor(0, 0, max_steps, floor) == pytest.approx(1.0)


def test_logged_lr_follows_schedule(reference):
    logged = {s: float(v) for s, _, v in records(reference, names=("lr",))}
    assert sorted(logged) == list(range(6))
    for s, v in logged.items():
        assert math.isclose(v, 6e-4 * tg.lr_factor(s, 2, 6, 0.1), rel_tol=1e-6)


def test_times_are_rounded_to_the_minute():
    assert [tg.hms(s) for s in (0, 29, 31, 33 * 60, 100 * 60, 7199, 7170,
                                3 * 3600 + 59.6 * 60)] == [
        "0h00m", "0h00m", "0h01m", "0h33m", "1h40m", "2h00m", "2h00m", "4h00m"]  # never "1h60m"


@pytest.mark.parametrize("every", [0, 1, 3, 7, 250])
def test_count_due_matches_the_loop(every):
    """The ETA counts the evaluations still to come exactly as the loop runs them."""
    last = 40
    for after in range(0, last + 1):
        brute = sum(1 for s in range(after + 1, last + 1)
                    if (every > 0 and s % every == 0) or s == last)
        assert tg.count_due(every, after, last) == brute, (every, after)


def test_device_and_dtype_choices(monkeypatch):
    assert tg.choose_device("cuda", 3) == "cuda:3"  # a bare "cuda" is this rank's GPU
    assert tg.choose_device("cpu", 3) == "cpu"
    assert tg.resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))  # V100
    assert tg.choose_dtype("auto", torch.device("cuda:0")) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 6))  # RTX 3090
    assert tg.choose_dtype("auto", torch.device("cuda:0")) == "bf16"
    assert tg.choose_dtype("auto", torch.device("cpu")) == "fp32"


def test_a_torchrun_rank_ends_with_its_exit_code_and_all_its_output():
    """Under torchrun the script ends with os._exit (Python's own shutdown can abort while gloo's
    threads release their tensors): the exit code stands and piped, buffered output is kept."""
    script = "import train_gpt2 as tg; print('last words', end=''); tg.exit_process(3)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"RANK": "0"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=RUN_TIMEOUT)
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "last words", "")
