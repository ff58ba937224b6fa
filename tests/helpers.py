"""What several test files share: the tiny run every trainer test starts from, and its data."""

import os
from pathlib import Path

import numpy as np

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


def write_shards(data_dir, seed=0, train_lengths=TRAIN_LENGTHS, val_length=VAL_LENGTH, high=tg.GPT2_VOCAB):
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
    """A folder with a hellaswag_val.jsonl: the given lines, or the first n rows of the real file."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if lines is None:
        with open(real_hellaswag_file(), encoding="utf-8") as f:
            lines = [line for line in f if line.strip()][:n]
    (out_dir / "hellaswag_val.jsonl").write_text("".join(lines), encoding="utf-8")
    return out_dir
