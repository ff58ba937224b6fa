"""
Tests for the trainer, train_gpt2.py: CPU only, offline, a tiny model on small generated shards,
driven through the real command line (`python train_gpt2.py ...` and `torchrun`-style
`python -m torch.distributed.run`), plus the data loader and LR schedule called in-process.

    TIKTOKEN_CACHE_DIR=.../tiktoken_cache python -m pytest tests/test_trainer.py -q --durations=10

What a user relies on, and where it is checked:
  * DDP on 2 processes (gloo) trains exactly like 1 process with twice the accumulation
    (test_ddp_matches_single_process, shuffle 0 and 1);
  * a killed run resumed with --resume equals an uninterrupted run: same loss strings, same
    samples, same final weights, no duplicated log records (test_kill_and_resume_is_exact);
  * every training token is a target once per epoch, epochs are reshuffled, and the data of a
    step does not depend on micro_batch / world size (test_loader_*);
  * the validation set and its loss do not depend on micro_batch / world size (test_val_*);
  * bad input -> one line "error: ..." on stderr, exit code 1, no traceback, existing
    checkpoints and logs untouched (test_bad_input_*, test_nan_*);
  * --compile 1, --export, --benchmark, config.json, checkpoint format, LR schedule.

The shared runs (one uninterrupted reference run, a "finished" log dir) are module-scoped
fixtures, so each is paid for once.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _cand in (REPO.parent / "shared/data/tiktoken_cache", REPO / "shared/data/tiktoken_cache"):
    if _cand.is_dir():  # CI: the clone lives beside shared/
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_cand))
        break

import train_gpt2 as tg  # noqa: E402

FIXTURE_HELLASWAG = REPO / "tests/fixtures/hellaswag_tiny.jsonl"

# The tiny model/run every CLI test starts from (later flags on a command line override these).
# 2 layers, 64 channels, the real (padded) GPT-2 vocab; 8 sequences of 32 tokens per step =
# 4 micro-steps of 2 on one process, 2 per rank on two.
TINY = [
    "--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64",
    "--seq_len", "32", "--micro_batch", "2", "--total_batch", "256",
    "--max_steps", "6", "--warmup_steps", "2", "--val_every", "3", "--val_tokens", "2000",
    "--hellaswag_every", "0", "--sample_every", "0", "--checkpoint_every", "0", "--device", "cpu",
]
# Train shards of uneven lengths: windows cross shard ends, and 1238 tokens = 38 windows of 32,
# so the 48 sequences of a 6-step run cross into a second (reshuffled) epoch at step 4.
TRAIN_LENGTHS = (500, 317, 421)
VAL_LENGTH = 5000
SEQ_LEN, VAL_TOKENS = 32, 2000

RUN_TIMEOUT = 600  # seconds; generous, the box is shared and noisy
COMPILE_TIMEOUT = 1500
ERROR_TIMEOUT = 300


# -----------------------------------------------------------------------------
# helpers


def write_shards(data_dir, seed=0, train_lengths=TRAIN_LENGTHS, val_length=VAL_LENGTH, high=tg.GPT2_VOCAB):
    """build-nanogpt style uint16 shards of random token ids < high."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(data_dir / "tiny_val_000000.npy", rng.integers(0, high, val_length).astype(np.uint16))
    for i, n in enumerate(train_lengths):
        np.save(data_dir / f"tiny_train_{i:06d}.npy", rng.integers(0, high, n).astype(np.uint16))
    return data_dir


def write_hellaswag_dir(out_dir, n=8):
    """A folder with a hellaswag_val.jsonl of the first n rows of whichever file is available."""
    candidates = []
    if os.environ.get("HELLASWAG_DIR"):
        candidates.append(Path(os.environ["HELLASWAG_DIR"]) / "hellaswag_val.jsonl")
    candidates += [REPO.parent / "shared/data/hellaswag/hellaswag_val.jsonl", FIXTURE_HELLASWAG]
    src = next(p for p in candidates if p.is_file())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(src, encoding="utf-8") as f:
        rows = [line for line in f if line.strip()][:n]
    (out_dir / "hellaswag_val.jsonl").write_text("".join(rows), encoding="utf-8")
    return out_dir


def cli_env(hellaswag_dir):
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # never inherit a distributed job
    env["HELLASWAG_DIR"] = str(hellaswag_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def train_cmd(*args, ddp=False):
    launcher = [sys.executable]
    if ddp:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return launcher + ["train_gpt2.py", *[str(a) for a in args]]


def run_cli(env, *args, ddp=False, timeout=RUN_TIMEOUT):
    return subprocess.run(train_cmd(*args, ddp=ddp), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}"
    return proc


def records(log_dir, names=("train", "val")):
    """[(step, name, value-string)] of log.txt, in file order, for the given names."""
    out = []
    for line in (Path(log_dir) / "log.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in names:
            out.append((int(parts[0]), parts[1], parts[2]))
    return out


def record_map(log_dir, names=("train", "val")):
    return {(s, n): v for s, n, v in records(log_dir, names)}


def checkpoints(log_dir):
    return sorted(p.name for p in Path(log_dir).glob("model_*.pt"))


def snapshot(directory):
    """name -> (size, mtime_ns, sha256) of every file in a folder (recursively)."""
    snap = {}
    for p in sorted(Path(directory).rglob("*")):
        if p.is_file():
            st = p.stat()
            snap[str(p.relative_to(directory))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return snap


def assert_user_error(proc, *needles):
    """The contract for bad input: exit code 1, exactly one stderr line 'error: ...', no traceback."""
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, f"exit {proc.returncode}, stderr:\n{proc.stderr[-5000:]}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-5000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"stderr is not one 'error:' line:\n{proc.stderr[-5000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def state_dicts_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -----------------------------------------------------------------------------
# shared fixtures


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    data = write_shards(root / "data")
    hs = write_hellaswag_dir(root / "hellaswag")
    yield {"root": root, "data": data, "env": cli_env(hs)}
    for ckpt in root.rglob("model_*.pt"):  # ~40 MB each; pytest keeps the last few tmp dirs
        ckpt.unlink()


def reference_args(data, log_dir):
    """The uninterrupted run the resume and DDP tests compare against: a checkpoint and 2
    samples at every step, so a resume re-does a step that already wrote samples."""
    return [*TINY, "--data_dir", data, "--log_dir", log_dir, "--shuffle", "1", "--checkpoint_every", "1",
            "--sample_every", "1", "--num_samples", "2", "--sample_tokens", "8"]


@pytest.fixture(scope="module")
def reference(work):
    log_dir = work["root"] / "reference"
    ok(run_cli(work["env"], *reference_args(work["data"], log_dir)))
    return log_dir


@pytest.fixture(scope="module")
def finished(work, reference):
    """A private copy of a finished run's log dir, for the bad-input tests to (not) touch."""
    dst = work["root"] / "finished"
    shutil.copytree(reference, dst)
    return dst


# -----------------------------------------------------------------------------
# 1. DDP == single process with twice the accumulation


@pytest.mark.parametrize("shuffle", [0, 1])
def test_ddp_matches_single_process(work, reference, shuffle):
    root, env, data = work["root"], work["env"], work["data"]
    if shuffle == 1:
        single = reference  # same data order and model; it also checkpoints and samples, which must not matter
    else:
        single = root / "single_shuffle0"
        ok(run_cli(env, *TINY, "--data_dir", data, "--log_dir", single, "--shuffle", "0"))
    ddp = root / f"ddp_shuffle{shuffle}"
    ok(run_cli(env, *TINY, "--data_dir", data, "--log_dir", ddp, "--shuffle", shuffle, ddp=True))

    a, b = record_map(single), record_map(ddp)
    expected_keys = {(s, "train") for s in range(6)} | {(s, "val") for s in (0, 3, 6)}
    assert set(a) == expected_keys and set(b) == expected_keys
    for key in sorted(expected_keys):
        assert abs(float(a[key]) - float(b[key])) < 1e-5, f"{key}: 1 process {a[key]}, 2 processes {b[key]}"
    for log_dir in (single, ddp):  # every record once
        keys = [(s, n) for s, n, _ in records(log_dir)]
        assert len(keys) == len(set(keys))

    config = json.loads((ddp / "config.json").read_text())
    assert config["world_size"] == 2 and config["grad_accum_steps"] == 2
    assert json.loads((single / "config.json").read_text())["grad_accum_steps"] == 4
    # the DDP run's final checkpoint is saved from the unwrapped model
    ckpt = torch.load(ddp / "model_00006.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]
    assert checkpoints(ddp) == ["model_00006.pt"]


# -----------------------------------------------------------------------------
# 2. kill -9 and --resume == never interrupted


def logged_past_checkpoint(log_dir):
    ckpts = checkpoints(log_dir)
    if not ckpts or not (log_dir / "log.txt").exists():
        return False
    # a record is complete once its line ends; the last line may be half-written
    lines = (log_dir / "log.txt").read_text().split("\n")[:-1]
    trained = [int(line.split()[0]) for line in lines if line.split()[1:2] == ["train"]]
    return bool(trained) and max(trained) >= int(ckpts[-1][6:11])


def test_kill_and_resume_is_exact(work, reference):
    env, data = work["env"], work["data"]
    log_dir = work["root"] / "killed"
    args = reference_args(data, log_dir)
    out = open(work["root"] / "killed.out", "w")
    proc = subprocess.Popen(train_cmd(*args), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # kill once a checkpoint exists AND log.txt already holds a training record of a step at or
        # after it: the resume must then drop records (and samples) that it re-does
        deadline = time.time() + RUN_TIMEOUT
        while not logged_past_checkpoint(log_dir):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no checkpoint appeared in time"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
        out.close()
    assert proc.returncode == -signal.SIGKILL
    assert "model_00006.pt" not in checkpoints(log_dir), "killed too late to test anything"
    killed_at = checkpoints(log_dir)[-1]
    assert logged_past_checkpoint(log_dir)

    ok(run_cli(env, *args, "--resume"))

    # every train/val record identical as a string, in the same order, and each once
    assert records(log_dir) == records(reference)
    all_keys = [(s, n) for s, n, _ in records(log_dir, names=("train", "val", "lr", "norm", "dt", "tok/s", "elapsed"))]
    duplicates = [k for k, c in collections.Counter(all_keys).items() if c > 1]
    assert not duplicates, f"records logged twice: {duplicates}"
    # samples: no step twice, and the same text as the uninterrupted run (same weights, same seeds)
    sample_keys = [tuple(line.split(" ", 2)[:2]) for line in (log_dir / "samples.txt").read_text().splitlines()]
    assert len(sample_keys) == len(set(sample_keys)), "samples.txt repeats a step"
    assert {int(s) for s, _ in sample_keys} == set(range(1, 7))
    assert (log_dir / "samples.txt").read_text() == (reference / "samples.txt").read_text()
    # the final weights and optimizer state are bit-identical
    mine = torch.load(log_dir / "model_00006.pt", map_location="cpu", weights_only=True)
    ref = torch.load(reference / "model_00006.pt", map_location="cpu", weights_only=True)
    assert state_dicts_equal(mine["model"], ref["model"])
    assert mine["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for k in ref["optimizer"]["state"]:
        assert state_dicts_equal(mine["optimizer"]["state"][k], ref["optimizer"]["state"][k])
    # config.json records where the run was resumed from
    resumed_from = json.loads((log_dir / "config.json").read_text())["resumed_from"]
    assert [os.path.basename(p) for p in resumed_from] == [killed_at]
    # elapsed keeps counting across the resume
    elapsed = [float(v) for _, _, v in records(log_dir, names=("elapsed",))]
    assert elapsed == sorted(elapsed)


# -----------------------------------------------------------------------------
# 3. the train loader, in-process: epochs, shuffling, independence from the batch layout


def position_stream(tmp_path, lengths, split="train"):
    """Shards whose token values say where they are: 1000 * shard + offset."""
    paths = []
    for s, n in enumerate(lengths):
        p = tmp_path / f"pos_{split}_{s:06d}.npy"
        np.save(p, (1000 * s + np.arange(n)).astype(np.uint16))
        paths.append(str(p))
    return tg.TokenStream(paths, vocab_size=65536)


LOADER_LENGTHS = (101, 57, 230, 7)  # 395 tokens; one shard shorter than a window
LOADER_SEQ = 8


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
            shard_change = a % 1000 == shard_len[a // 1000] - 1 and b % 1000 == 0 and b // 1000 != a // 1000
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
    assert ends == [1000 * s + o for o in range(lengths[s] - tail, lengths[s])], "left-out tokens are not the stream's end"


def test_loader_epochs_cover_every_token_once_and_reshuffle(tmp_path):
    stream = position_stream(tmp_path, LOADER_LENGTHS)
    loader = tg.TrainLoader(stream, LOADER_SEQ, seed=1337, shuffle=True)
    assert loader.n_windows == (sum(LOADER_LENGTHS) - 1) // LOADER_SEQ
    epochs = [epoch_windows(loader, e) for e in range(3)]
    for windows in epochs:
        check_epoch_covers_stream(windows, LOADER_LENGTHS, LOADER_SEQ)
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2], "two epochs visit the windows in the same order"
    assert sorted(epochs[0]) != epochs[0], "shuffle 1 left the windows in stream order"
    # the order is a function of (seed, epoch) only: a resumed run rebuilds it, any epoch first
    again = tg.TrainLoader(position_stream(tmp_path, LOADER_LENGTHS), LOADER_SEQ, seed=1337, shuffle=True)
    assert epoch_windows(again, 2) == epochs[2] and epoch_windows(again, 0) == epochs[0]
    other_seed = tg.TrainLoader(stream, LOADER_SEQ, seed=7, shuffle=True)
    assert epoch_windows(other_seed, 0) != epochs[0]


def test_loader_without_shuffle_repeats_stream_order(tmp_path):
    stream = position_stream(tmp_path, LOADER_LENGTHS)
    loader = tg.TrainLoader(stream, LOADER_SEQ, seed=1337, shuffle=False)
    flat = np.concatenate([np.load(p) for p in stream.paths]).astype(int)
    in_order = [tuple(flat[i * LOADER_SEQ: i * LOADER_SEQ + LOADER_SEQ + 1]) for i in range(loader.n_windows)]
    e0, e1 = epoch_windows(loader, 0), epoch_windows(loader, 1)
    check_epoch_covers_stream(e0, LOADER_LENGTHS, LOADER_SEQ)
    assert e0 == in_order and e1 == in_order


@pytest.mark.parametrize("shuffle", [False, True])
def test_loader_step_data_independent_of_layout(tmp_path, shuffle):
    """The sequences of a global step are the same set for any world size / micro_batch (the
    runs differ only in who reads which), including a step that straddles an epoch end."""
    loader = tg.TrainLoader(position_stream(tmp_path, LOADER_LENGTHS), LOADER_SEQ, seed=3, shuffle=shuffle)
    seqs_per_step = 8  # total_batch = 64 tokens; n_windows = 49, so step 6 crosses into epoch 1
    layouts = [(1, 1), (1, 2), (1, 4), (1, 8), (2, 1), (2, 2), (2, 4), (4, 1), (4, 2), (8, 1)]  # (world, micro_batch)
    for step in range(8):
        expected = sorted(tuple(int(t) for t in loader.window(g))
                          for g in range(step * seqs_per_step, (step + 1) * seqs_per_step))
        for world, micro_batch in layouts:
            grad_accum = seqs_per_step // (world * micro_batch)
            assert grad_accum * world * micro_batch == seqs_per_step
            rows = []
            for micro_step in range(grad_accum):
                for rank in range(world):
                    x, y = loader.batch(step, micro_step, rank, micro_batch, world, seqs_per_step)
                    assert x.shape == y.shape == (micro_batch, LOADER_SEQ) and x.dtype == y.dtype == torch.int64
                    assert torch.equal(x[:, 1:], y[:, :-1]), "targets are not the inputs shifted by one"
                    rows += [tuple(xr.tolist()) + (int(yr[-1]),) for xr, yr in zip(x, y)]
            assert sorted(rows) == expected, f"step {step}: world {world} x micro_batch {micro_batch} reads other data"
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


class FakeDist:
    """One rank of a world, with all_reduce recording the local tensors (summed by the test)."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size, self.master, self.ddp = rank, world_size, rank == 0, False
        self.reduced = []

    def all_reduce(self, tensor, op="sum"):
        self.reduced.append(tensor.clone())
        return tensor


def test_val_loss_independent_of_micro_batch_and_world(tmp_path):
    stream = position_stream(tmp_path, (40, 77), split="val")
    vs = tg.ValSet(stream, 8, 100)  # 12 windows: short last batches get padded
    torch.manual_seed(0)
    model = tg.GPT(tg.GPTConfig(block_size=16, vocab_size=2048, n_layer=1, n_head=2, n_embd=16))
    x, y = tg.to_batch(vs.windows(range(vs.n_windows)))
    with torch.no_grad():
        _, direct = model(x, y)
    cpu, amp = torch.device("cpu"), contextlib.nullcontext()
    for micro_batch in (1, 3, 4, 5, 12, 16):
        got = tg.evaluate_val(model, vs, tg.Dist(), micro_batch, cpu, amp)
        assert abs(got - direct.item()) < 1e-6, f"micro_batch {micro_batch}: {got} vs {direct.item()}"
        for world in (2, 5):
            loss_sum = count = 0.0
            for rank in range(world):
                d = FakeDist(rank, world)
                tg.evaluate_val(model, vs, d, micro_batch, cpu, amp)
                loss_sum, count = loss_sum + d.reduced[0].item(), count + d.reduced[1].item()
            assert count == vs.n_windows * 8
            assert abs(loss_sum / count - direct.item()) < 1e-6, f"world {world} x micro_batch {micro_batch}"
    assert model.training, "evaluate_val must leave the model in training mode"


def test_val_loss_same_for_micro_batch_2_and_4(work, reference):
    log_dir = work["root"] / "val_mb4"
    ok(run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", log_dir, "--micro_batch", "4",
               "--max_steps", "1", "--shuffle", "1"))
    a, b = record_map(reference)[(0, "val")], record_map(log_dir)[(0, "val")]
    assert abs(float(a) - float(b)) < 1e-5, f"val loss with micro_batch 2: {a}, with 4: {b}"
    # same init and same data: the first training loss too
    assert abs(float(record_map(reference)[(0, "train")]) - float(record_map(log_dir)[(0, "train")])) < 1e-5


# -----------------------------------------------------------------------------
# 5. bad input: one line, exit 1, nothing touched


@pytest.fixture(scope="module")
def bad_data(work):
    root = work["root"]
    dirs = {"empty": root / "bad_empty", "int32": root / "bad_int32", "token60000": root / "bad_token"}
    dirs["empty"].mkdir(exist_ok=True)
    write_shards(dirs["int32"])
    arr = np.load(dirs["int32"] / "tiny_train_000000.npy").astype(np.int32)
    np.save(dirs["int32"] / "tiny_train_000000.npy", arr)
    write_shards(dirs["token60000"])
    arr = np.load(dirs["token60000"] / "tiny_train_000001.npy")
    arr[5] = 60000  # a valid uint16, not a GPT-2 token
    np.save(dirs["token60000"] / "tiny_train_000001.npy", arr)
    return dirs


# (case, extra args, substrings of the error line); "{finished}" etc. are filled in below.
RESUMABLE_ERRORS = [
    ("missing_data_dir", ["--resume", "--data_dir", "{root}/no_such_dir"], ["does not exist"]),
    ("empty_data_dir", ["--resume", "--data_dir", "{bad_empty}"], ["train", "npy"]),
    ("int32_shard", ["--resume", "--data_dir", "{bad_int32}"], ["tiny_train_000000.npy", "int32", "uint16"]),
    ("fresh_run_over_checkpoints", [], ["already holds checkpoints", "--resume"]),
    ("total_batch_not_divisible", ["--resume", "--micro_batch", "4", "--total_batch", "192"],
     ["192", "1, 2, 3, 6"]),
    ("resume_other_settings", ["--resume", "--n_embd", "32", "--seed", "7"], ["n_embd 64 -> 32", "seed 1337 -> 7"]),
    ("resume_missing_path", ["--resume", "{finished}/model_00099.pt"], ["model_00099.pt"]),
]


@pytest.mark.parametrize("case,extra,needles", RESUMABLE_ERRORS, ids=[c[0] for c in RESUMABLE_ERRORS])
def test_bad_input_leaves_finished_run_untouched(work, finished, bad_data, case, extra, needles):
    root, dirs = work["root"], bad_data
    fill = {"root": root, "finished": finished, "bad_empty": dirs["empty"], "bad_int32": dirs["int32"]}
    extra = [a.format(**fill) for a in extra]
    before = snapshot(finished)
    proc = run_cli(work["env"], *reference_args(work["data"], finished), *extra, timeout=ERROR_TIMEOUT)
    assert_user_error(proc, *needles)
    assert snapshot(finished) == before, "a failed start changed the finished run's files"


def test_bad_input_resume_without_checkpoint(work):
    log_dir = work["root"] / "crashed_before_checkpoint"
    log_dir.mkdir()
    (log_dir / "log.txt").write_text("0 val 10.8\n0 train 10.9\n")
    before = snapshot(log_dir)
    proc = run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", log_dir, "--resume",
                   timeout=ERROR_TIMEOUT)
    assert_user_error(proc, "no checkpoint")
    assert snapshot(log_dir) == before


@pytest.mark.parametrize("case", ["token_60000_in_shard", "vocab_size_too_small"])
def test_bad_input_token_out_of_vocab(work, bad_data, case):
    root = work["root"]
    log_dir = root / f"bad_{case}"
    if case == "token_60000_in_shard":
        data, extra, needles = bad_data["token60000"], [], ["token id 60000", "50304"]
    else:  # random ids up to 50256 against a 1000-row embedding
        data, extra, needles = work["data"], ["--vocab_size", "1000"], ["token id", "vocab size 1000"]
    proc = run_cli(work["env"], *TINY, "--data_dir", data, "--log_dir", log_dir, "--shuffle", "0", *extra,
                   timeout=ERROR_TIMEOUT)
    assert_user_error(proc, *needles)
    assert checkpoints(log_dir) == [], "a run on bad data wrote a checkpoint"


# --- NaN / inf: a huge learning rate after good checkpoints were saved


def nan_run(work, finished_src, name, *extra):
    log_dir = work["root"] / name
    shutil.copytree(finished_src, log_dir)
    before = {n: v for n, v in snapshot(log_dir).items() if n.startswith("model_")}
    # resume at step 2; update 2 with lr 1e30 leaves weights that make every later loss NaN
    proc = run_cli(work["env"], *reference_args(work["data"], log_dir), "--resume", log_dir / "model_00002.pt",
                   "--max_lr", "1e30", *extra, timeout=ERROR_TIMEOUT)
    after = {n: v for n, v in snapshot(log_dir).items() if n.startswith("model_")}
    return proc, before, after


def assert_diverged_error(proc):
    line = assert_user_error(proc).lower()
    assert any(word in line for word in ("nan", "inf", "finite", "diverg")), f"unclear message: {line}"


def test_nan_loss_stops_without_touching_checkpoints(work, reference):
    proc, before, after = nan_run(work, reference, "nan_run", "--sample_every", "0")
    assert_diverged_error(proc)
    assert sorted(after) == sorted(before), "checkpoints appeared or disappeared"
    changed = sorted(n for n in before if before[n] != after[n])
    assert not changed, f"a NaN run overwrote the good checkpoints {changed}"


def test_nan_loss_with_sampling_on_is_a_clear_error(work, reference):
    """Same blow-up, with samples due at every step: the user still gets the one-line message."""
    proc, before, after = nan_run(work, reference, "nan_run_sampling")
    assert_diverged_error(proc)
    assert after == before


# -----------------------------------------------------------------------------
# 6. config.json, checkpoints, export


def test_config_json_holds_resolved_config(work, reference):
    config = json.loads((reference / "config.json").read_text())
    for dest in vars(tg.get_args([])):
        assert dest in config, f"config.json lacks the argument {dest}"
    assert config["micro_batch"] == 2 and config["total_batch"] == 256 and config["seq_len"] == SEQ_LEN
    assert config["world_size"] == 1 and config["grad_accum_steps"] == 256 // (2 * SEQ_LEN)
    cfg = tg.GPTConfig(**config["model_config"])  # round-trips
    assert asdict(cfg) == asdict(tg.GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64))
    assert config["n_params"] == tg.GPT(cfg).num_params()
    assert config["tokens_per_step"] == 256 and config["train_tokens"] == sum(TRAIN_LENGTHS)
    assert config["val_tokens_used"] == VAL_TOKENS // SEQ_LEN * SEQ_LEN
    assert config["device_name"] == "cpu" and config["n_gpus"] == 0 and config["resumed_from"] == []
    assert config["torch_version"] == torch.__version__


def test_checkpoints_are_clean_and_loadable(reference):
    names = checkpoints(reference)
    assert names == [f"model_{s:05d}.pt" for s in range(1, 7)]
    final = None
    for name in names:
        ckpt = torch.load(reference / name, map_location="cpu", weights_only=True)
        assert ckpt["step"] == int(name[6:11])
        assert not [k for k in ckpt["model"] if k.startswith(("module.", "_orig_mod."))]
        assert tg.GPTConfig(**ckpt["config"]) == tg.GPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=64)
        assert ckpt["args"]["seq_len"] == SEQ_LEN and "optimizer" in ckpt and "rng" in ckpt
        final = ckpt
    model = tg.load_checkpoint_model(str(reference / names[-1]))
    assert state_dicts_equal(model.state_dict(), final["model"])


def test_export_loads_in_transformers_with_same_logits(work, reference):
    from transformers import GPT2LMHeadModel

    ckpt = reference / "model_00006.pt"
    out = work["root"] / "exported_hf"
    proc = ok(subprocess.run([sys.executable, "train_gpt2.py", "--export", str(ckpt), "--export_dir", str(out)],
                             cwd=REPO, env=work["env"], capture_output=True, text=True, timeout=RUN_TIMEOUT))
    assert str(out) in proc.stdout
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    ours = tg.load_checkpoint_model(str(ckpt)).eval()
    idx = torch.randint(0, tg.GPT2_VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(idx).logits
        mine, _ = ours(idx)
    assert theirs.shape == (2, 40, tg.GPT2_VOCAB)
    assert (theirs - mine[..., : tg.GPT2_VOCAB]).abs().max().item() < 1e-4


# -----------------------------------------------------------------------------
# 7. --benchmark and --compile


def test_benchmark_prints_one_json_line(work):
    proc = ok(run_cli(work["env"], *TINY, "--log_dir", work["root"] / "bench_unused", "--benchmark", "--steps", "3"))
    results = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                results.append(obj)
    assert len(results) == 1, proc.stdout[-3000:]
    r = results[0]
    for key in ("tokens_per_s", "mfu", "peak_mem_gib", "compile_s", "gpu", "step_ms", "world_size", "n_params"):
        assert key in r, f"benchmark JSON lacks {key}"
    assert r["tokens_per_s"] > 0 and r["mfu"] is None and r["gpu"] == "cpu" and r["steps"] == 3
    assert math.isclose(r["tokens_per_s"], r["total_batch"] / (r["step_ms"] / 1000), rel_tol=0.01)
    assert not (work["root"] / "bench_unused" / "log.txt").exists()


def test_compile_runs_on_cpu_with_val_hellaswag_and_samples(work, reference):
    """Slow (inductor compiles a few graphs on 2 cores); kept small, but always run."""
    log_dir = work["root"] / "compiled"
    ok(run_cli(work["env"], *TINY, "--data_dir", work["data"], "--log_dir", log_dir, "--shuffle", "1",
               "--compile", "1", "--max_steps", "2", "--val_every", "1", "--hellaswag_every", "1",
               "--hellaswag_limit", "8", "--sample_every", "1", "--num_samples", "2", "--sample_tokens", "8",
               timeout=COMPILE_TIMEOUT))
    got = record_map(log_dir, names=("train", "val", "hella", "hella_acc"))
    assert {(s, "train") for s in (0, 1)} <= set(got)
    for step in (0, 1, 2):
        assert (step, "val") in got and (step, "hella") in got
        assert 0.0 <= float(got[(step, "hella")]) <= 1.0
    samples = (log_dir / "samples.txt").read_text().splitlines()
    assert sorted({line.split()[0] for line in samples}) == ["1", "2"]
    config = json.loads((log_dir / "config.json").read_text())
    assert config["compile_resolved"] is True
    ckpt = torch.load(log_dir / "model_00002.pt", map_location="cpu", weights_only=True)
    assert not [k for k in ckpt["model"] if k.startswith(("_orig_mod.", "module."))]
    # same init, data and first LRs as the eager reference run: compile must not change the math
    ref = record_map(reference)
    for key in ((0, "val"), (0, "train"), (1, "train")):
        assert abs(float(got[key]) - float(ref[key])) < 1e-4, f"{key}: compiled {got[key]}, eager {ref[key]}"


# -----------------------------------------------------------------------------
# 8. the learning-rate schedule


def test_lr_schedule():
    max_lr, min_lr, warmup, max_steps = 6e-4, 6e-5, 10, 100
    lr = [tg.get_lr(s, max_lr, min_lr, warmup, max_steps) for s in range(max_steps + 5)]
    for s in range(warmup):  # linear warmup, reaching max_lr at the last warmup step
        assert math.isclose(lr[s], max_lr * (s + 1) / warmup)
    assert math.isclose(lr[warmup], max_lr)
    mid = warmup + (max_steps - warmup) // 2
    assert math.isclose(lr[mid], (max_lr + min_lr) / 2)
    for s in range(warmup, max_steps):  # cosine: decreasing, matches the formula
        ratio = (s - warmup) / (max_steps - warmup)
        assert math.isclose(lr[s], min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (max_lr - min_lr))
        assert lr[s + 1] <= lr[s]
    assert all(math.isclose(v, min_lr) for v in lr[max_steps:])
    # warmup_steps 0 starts at max_lr without dividing by zero
    assert math.isclose(tg.get_lr(0, max_lr, min_lr, 0, max_steps), max_lr)


def test_logged_lr_follows_schedule(reference):
    logged = {s: float(v) for s, _, v in records(reference, names=("lr",))}
    assert sorted(logged) == list(range(6))
    for s, v in logged.items():
        assert math.isclose(v, tg.get_lr(s, 6e-4, 6e-5, 2, 6), rel_tol=1e-6)
