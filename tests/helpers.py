"""What several test files share: the tiny run every trainer test starts from, its data, the
trainer's command line, and the checks of what a run leaves behind."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import train_gpt2 as tg

REPO = Path(__file__).resolve().parents[1]
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
MUON = ["--optimizer", "muon", "--arch", "modern", "--muon_lr", "0.01"]
# Train shards of uneven lengths: windows cross shard ends, and 1238 tokens = 38 windows of 32,
# so the 48 sequences of a 6-step run cross into a second (reshuffled) epoch at step 4.
TRAIN_LENGTHS = (500, 317, 421)
VAL_LENGTH = 5000
SEQ_LEN, VAL_TOKENS = 32, 2000


def write_shards(data_dir, seed=0, train_lengths=TRAIN_LENGTHS, val_length=VAL_LENGTH,
                 high=tg.GPT2_VOCAB):
    """build-nanogpt style uint16 shards of random token ids < high."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(data_dir / "tiny_val_000000.npy", rng.integers(0, high, val_length).astype(np.uint16))
    for i, n in enumerate(train_lengths):
        np.save(data_dir / f"tiny_train_{i:06d}.npy", rng.integers(0, high, n).astype(np.uint16))
    return data_dir


def real_hellaswag_file():
    candidates = []
    if os.environ.get("HELLASWAG_DIR"):
        candidates.append(Path(os.environ["HELLASWAG_DIR"]) / "hellaswag_val.jsonl")
    candidates += [REPO.parent / "shared/data/hellaswag/hellaswag_val.jsonl", FIXTURE_HELLASWAG]
    return next(p for p in candidates if p.is_file())


def write_hellaswag_dir(out_dir, n=8, lines=None):
    """A folder with a hellaswag_val.jsonl: the given lines, or the first n rows of the real
    file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lines is None:
        with open(real_hellaswag_file(), encoding="utf-8") as f:
            lines = [line for line in f if line.strip()][:n]
    (out_dir / "hellaswag_val.jsonl").write_text("".join(lines), encoding="utf-8")
    return out_dir


# -----------------------------------------------------------------------------
# the trainer's command line

RUN_TIMEOUT = 600  # seconds; generous, the box is shared and noisy


def cli_env(hellaswag_dir):
    env = dict(os.environ)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):
        env.pop(key, None)  # never inherit a distributed job
    env["HELLASWAG_DIR"] = str(hellaswag_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def work_dir(tmp_path_factory, name):
    """A module's workspace (a generator for a fixture): shards, a HellaSwag dir of 8 rows and the
    env that points at it; the checkpoints are deleted at the end."""
    root = tmp_path_factory.mktemp(name)
    data = write_shards(root / "data")
    hs = write_hellaswag_dir(root / "hellaswag")
    yield {"root": root, "data": data, "env": cli_env(hs), "hellaswag": hs}
    for ckpt in root.rglob("model_*.pt"):  # ~40 MB each; pytest keeps the last few tmp dirs
        ckpt.unlink()


def train_cmd(*args, ddp=False):
    launcher = [sys.executable]
    if ddp:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return launcher + ["train_gpt2.py", *[str(a) for a in args]]


def run_cli(env, *args, ddp=False, timeout=RUN_TIMEOUT):
    return subprocess.run(train_cmd(*args, ddp=ddp), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}"
                                  f"\nstderr:\n{proc.stderr[-5000:]}")
    return proc


def assert_one_error_line(stderr, returncode, *needles):
    """The contract for bad input: exit code 1, exactly one stderr line 'error: ...', no
    traceback."""
    lines = stderr.splitlines()
    assert returncode == 1, f"exit {returncode}, stderr:\n{stderr[-5000:]}"
    assert "Traceback" not in stderr, stderr[-5000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), \
        f"stderr is not one 'error:' line:\n{stderr[-5000:]}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


# -----------------------------------------------------------------------------
# what a run leaves behind


def records(log_dir, names=("train", "val")):
    """[(step, name, value-string)] of log.txt's complete lines (train_gpt2.parse_record), in file
    order, for the given names: the value exactly as the run wrote it."""
    lines = (Path(log_dir) / "log.txt").read_text().split("\n")[:-1]  # the last one may be cut
    return [r for r in map(tg.parse_record, lines) if r is not None and r[1] in names]


def record_map(log_dir, names=("train", "val")):
    return {(s, n): v for s, n, v in records(log_dir, names)}


def checkpoints(log_dir):
    return sorted(p.name for p in Path(log_dir).glob("model_*.pt"))


def state_dicts_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def export_logit_gap(ckpt_path, hf_dir):
    """The largest |logit| difference between a checkpoint and its transformers export (loaded
    by AutoModelForCausalLM) on two seeded rows of 40 tokens; -> (gap, the export's logits
    shape)."""
    from transformers import AutoModelForCausalLM

    saved = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    ours = tg.GPT(tg.GPTConfig(**saved["config"])).eval()
    ours.load_state_dict(saved["model"])
    idx = torch.randint(0, tg.GPT2_VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(idx).logits
        mine, _ = ours(idx)
    return (theirs - mine[..., :tg.GPT2_VOCAB]).abs().max().item(), tuple(theirs.shape)
