"""
HellaSwag evaluation for GPT-2 style models, completion style (as in the GPT-2 / GPT-3 papers
and build-nanogpt): the context is fed to the model, and each of the 4 candidate endings is
scored by the language-model loss of its tokens. The ending with the lowest loss is the pick.

    acc       pick = ending with the smallest SUM of its token losses
    acc_norm  pick = ending with the smallest MEAN loss per ending token (the headline number)

Reference numbers (val set, 10,042 examples, this rendering; from build-nanogpt):
    gpt2 (124M)     acc 0.2859  acc_norm 0.2955  (its hellaswag.py, fp32); the baseline line in
                    its training plot is acc_norm 0.2945 (0.294463)
    gpt2-xl (1558M) acc 0.3842  acc_norm 0.4893

Two evaluators compute exactly the same thing:
- evaluate_reference(): one example (= 4 rows) per forward pass, the simple readable loop.
- evaluate(): the one the trainer calls. Rows from many examples go into one forward pass,
  sorted by length and padded only up to a few bucket lengths, so a torch.compile'd model
  sees few distinct shapes. Work is split across DDP ranks and counts are all-reduced.

Usage:
    python hellaswag.py --model gpt2                     # HF weights via train_gpt2.GPT
    python hellaswag.py --checkpoint log/model_19073.pt  # one of our training checkpoints
    python hellaswag.py --model gpt2 --reference         # the one-example-at-a-time loop
The last line printed on stdout is JSON: {"examples": N, "acc": x, "acc_norm": y, "seconds": s}

Data: https://github.com/rowanz/hellaswag (MIT). Files are cached in `hellaswag/` beside this
script, or in --data_dir / $HELLASWAG_DIR. A file already there is used without the network.
"""

import argparse
import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# data: download once into a cache dir, then read from there

SPLITS = ("train", "val", "test")
DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
# sha256 of the official val file; a fresh download of val must match it
KNOWN_SHA256 = {"val": "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"}


class HellaSwagDataError(RuntimeError):
    """Missing or undownloadable data. The message is one line, meant for the user."""


def default_data_dir():
    env = os.environ.get("HELLASWAG_DIR")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")


def split_path(split, data_dir=None):
    if split not in SPLITS:
        raise ValueError(f"unknown HellaSwag split {split!r} (choose from {', '.join(SPLITS)})")
    return os.path.join(data_dir or default_data_dir(), f"hellaswag_{split}.jsonl")


def download_file(url, path, expected_sha256=None, chunk_size=1 << 20):
    """Download url to path. Writes to a hidden temp name in the same dir and renames it only
    when complete (byte count == Content-Length when the server sends one, sha256 matches when
    known), so an interrupted or truncated download never leaves a file that looks finished."""
    out_dir = os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=out_dir, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        sha = hashlib.sha256()
        n_bytes = 0
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
            expected_len = resp.headers.get("Content-Length") if resp.headers is not None else None
            while True:
                chunk = resp.read(chunk_size)
                if not chunk:
                    break
                f.write(chunk)
                sha.update(chunk)
                n_bytes += len(chunk)
        if expected_len is not None and n_bytes != int(expected_len):
            raise OSError(f"truncated download: got {n_bytes} of {int(expected_len)} bytes")
        if expected_sha256 is not None and sha.hexdigest() != expected_sha256:
            raise OSError(f"sha256 mismatch: got {sha.hexdigest()}, expected {expected_sha256}")
        os.replace(tmp_path, path)  # atomic: the finished name appears only now
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def ensure_split(split="val", data_dir=None):
    """Path of the cached split file, downloading it first if it is not there yet."""
    data_dir = data_dir or default_data_dir()
    path = split_path(split, data_dir)
    if os.path.exists(path):
        return path  # present: never touch the network
    url = DATA_URL.format(split=split)
    try:
        download_file(url, path, expected_sha256=KNOWN_SHA256.get(split))
    except Exception as e:  # network down, HTTP error, truncated, bad hash, disk full, ...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise HellaSwagDataError(
            f"could not download {url} ({reason}); place hellaswag_{split}.jsonl in "
            f"{os.path.abspath(data_dir)} or set HELLASWAG_DIR to a dir that has it") from None
    return path


def load_examples(split="val", data_dir=None, limit=None):
    """The examples of a split as a list of dicts (keys ctx, endings, label, ...), in file order."""
    path = ensure_split(split, data_dir)
    examples = []
    with open(path, "r", encoding="utf-8") as f:
        for line in f:
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(json.loads(line))
    return examples

# -----------------------------------------------------------------------------
# rendering: exactly as build-nanogpt defines it

_ENCODER = None


def get_encoder():
    global _ENCODER
    if _ENCODER is None:
        import tiktoken  # imported lazily: honours TIKTOKEN_CACHE_DIR set by the caller
        _ENCODER = tiktoken.get_encoding("gpt2")
    return _ENCODER


def tokenize_example(example, enc=None):
    """-> (ctx_tokens, [end_tokens x 4], label). Each ending gets a leading space because in
    GPT-2's BPE the space belongs to the following word."""
    enc = enc or get_encoder()
    ctx_tokens = enc.encode(example["ctx"])
    end_tokens = [enc.encode(" " + ending) for ending in example["endings"]]
    label = example.get("label")
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    return ctx_tokens, end_tokens, label


def render_example(example, enc=None):
    """-> tokens (4, T) int64, mask (4, T) int64, label. Row i = context + ending i, right-padded
    with 0 to the longest row; mask is 1 over the ending tokens only (the ones that get scored)."""
    ctx_tokens, end_tokens, label = tokenize_example(example, enc)
    rows = [ctx_tokens + end for end in end_tokens]
    T = max(len(row) for row in rows)
    tokens = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, end in enumerate(end_tokens):
        tokens[i, :len(rows[i])] = torch.tensor(rows[i])
        mask[i, len(ctx_tokens):len(rows[i])] = 1
    return tokens, mask, label

# -----------------------------------------------------------------------------
# shared evaluation helpers


def _check_label(label, index):
    if not isinstance(label, int) or not 0 <= label < 4:
        raise ValueError(f"example {index} has no usable label ({label!r}); "
                         "the HellaSwag test split is unlabeled, use val or train")


def _autocast(device, autocast_dtype):
    if autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype)


def _model_block_size(model):
    """Max sequence length of the model when it tells us (GPT config), else None. Looks through
    torch.compile (_orig_mod) and DDP (module) wrappers."""
    for _ in range(3):
        config = getattr(model, "config", None)
        if config is not None:
            return getattr(config, "block_size", None) or getattr(config, "n_positions", None)
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if inner is None:
            break
        model = inner
    return None


def _result(n, correct, correct_norm, seconds, predictions=None):
    out = {
        "examples": int(n),
        "acc": correct / n if n else 0.0,
        "acc_norm": correct_norm / n if n else 0.0,
        "num_correct": int(correct),
        "num_correct_norm": int(correct_norm),
        "seconds": seconds,
    }
    if predictions is not None:
        out["predictions"] = predictions
    return out


@torch.no_grad()
def evaluate_reference(model, examples, device, *, autocast_dtype=None, return_predictions=False,
                       progress=False):
    """The anchor's algorithm: one example = one (4, T) forward pass, uncompiled shapes.
    Slow; kept as the ground truth that evaluate() must match. predictions: (index, pred, pred_norm)."""
    from tqdm import tqdm
    t0 = time.time()
    was_training = model.training
    model.eval()
    correct = correct_norm = 0
    predictions = []
    try:
        for i, example in enumerate(tqdm(examples, desc="hellaswag (reference)", disable=not progress)):
            tokens, mask, label = render_example(example)
            _check_label(label, i)
            tokens, mask = tokens.to(device), mask.to(device)
            with _autocast(device, autocast_dtype):
                logits, _ = model(tokens)  # (4, T, V)
            # the loss of token t comes from the logits at t-1
            shift_logits = logits[:, :-1, :].float()  # (4, T-1, V)
            shift_tokens = tokens[:, 1:]  # (4, T-1)
            losses = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                     shift_tokens.reshape(-1), reduction="none")
            losses = losses.view(tokens.size(0), -1)  # (4, T-1)
            shift_mask = mask[:, 1:].float()  # (4, T-1), 1 on the ending tokens
            sum_loss = (losses * shift_mask).sum(dim=1)  # (4,)
            avg_loss = sum_loss / shift_mask.sum(dim=1)  # (4,)
            pred = int(sum_loss.argmin().item())
            pred_norm = int(avg_loss.argmin().item())
            correct += int(pred == label)
            correct_norm += int(pred_norm == label)
            predictions.append((i, pred, pred_norm))
    finally:
        model.train(was_training)
    return _result(len(examples), correct, correct_norm, time.time() - t0,
                   predictions if return_predictions else None)

# -----------------------------------------------------------------------------
# the batched evaluator


def shard_indices(n, rank=0, world_size=1):
    """Indices of the examples this rank evaluates. Strided, so every rank gets a similar mix of
    lengths and the shards are disjoint and cover range(n)."""
    return list(range(rank, n, world_size))


def bucket_length(length, multiple=32, cap=None):
    """Round a row length up to the next multiple, so the forward pass sees a handful of
    sequence lengths (HellaSwag val: 6 buckets, 32..192) instead of ~150."""
    T = -(-length // multiple) * multiple
    if cap is not None:
        T = min(T, cap)
    return T


def plan_batches(row_lengths, rows_per_batch, multiple=32, cap=None):
    """Group rows into batches of exactly rows_per_batch rows (the last one is topped up with
    dummy rows later). Rows are sorted by length, longest first, so each batch pads little and
    the first batch is the largest (an out-of-memory shows up at once, and the allocator's cache
    is sized by it). -> list of (row_ids, T)."""
    order = np.argsort(-np.asarray(row_lengths), kind="stable")
    batches = []
    for start in range(0, len(order), rows_per_batch):
        ids = order[start:start + rows_per_batch]
        T = bucket_length(int(row_lengths[ids[0]]), multiple, cap)
        batches.append((ids, T))
    return batches


def _build_batch(row_ids, T, rows_per_batch, row_tokens, ctx_lens):
    """-> idx (rows_per_batch, T) int64, plus for every scored position: its flat index into the
    (rows_per_batch*T) logits, the target token and the row id. Unused rows are dummies (all 0)."""
    idx = np.zeros((rows_per_batch, T), dtype=np.int64)
    flat_pos, targets, owners = [], [], []
    for b, r in enumerate(row_ids):
        toks = row_tokens[r]
        idx[b, :len(toks)] = toks
        # ending token t is predicted by the logits at t-1; like the anchor, position 0 is never
        # scored (it has no logits before it), which only matters for an empty context
        start = max(ctx_lens[r], 1)
        t = np.arange(start, len(toks))
        flat_pos.append(b * T + t - 1)
        targets.append(np.asarray(toks[start:], dtype=np.int64))
        owners.append(np.full(len(t), r, dtype=np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)
    return idx, cat(flat_pos), cat(targets), cat(owners)


@torch.no_grad()
def evaluate(model, examples, device, *, batch_size=None, autocast_dtype=None, rank=0, world_size=1,
             progress=False, return_predictions=False, bucket_multiple=None, loss_chunk=None):
    """Batched HellaSwag eval. Same predictions as evaluate_reference(), much faster.

    model: called as `logits, _ = model(idx)` with idx (B, T) int64 (plain, torch.compile'd or
        DDP-unwrapped module). Its training mode is restored afterwards.
    batch_size: examples per forward pass (default 32 on a GPU, 8 on CPU); every forward has
        exactly 4*batch_size rows and a length T that is a multiple of bucket_multiple.
    bucket_multiple: default 32 on a GPU, so a compiled model sees few shapes (HellaSwag val:
        T in {32, 64, ..., 192}, 6 shapes, fewer than dynamo's recompile limit of 8 even with
        dynamic=False), at ~17% padding. Default 8 on CPU, where compute dominates and the
        padding cost more than the shapes (GPT-2 124M: 16% slower with 32).
    autocast_dtype: e.g. torch.bfloat16 on CUDA; the losses are always computed in fp32.
    rank, world_size: with world_size > 1 (torch.distributed initialized) this rank evaluates
        examples[rank::world_size] and counts are all-reduced, so every rank returns the global
        result. Its "predictions" (if asked for) are only this rank's.
    loss_chunk: scored positions per fp32 cross-entropy chunk; bounds the memory of the fp32
        copy of the logits to loss_chunk * vocab * 4 bytes. Default 4096 on a GPU (about one chunk
        per batch), 64 on CPU (there, buffers over 32 MB are fresh mmaps that page-fault on every
        use, which made the gather 5x slower).
    -> {"examples", "acc", "acc_norm", "num_correct", "num_correct_norm", "seconds"
        [, "predictions": [(index, pred, pred_norm), ...]]}
    """
    from tqdm import tqdm
    t0 = time.time()
    on_cuda = torch.device(device).type == "cuda"
    on_cpu = torch.device(device).type == "cpu"
    batch_size = batch_size or (8 if on_cpu else 32)
    loss_chunk = loss_chunk or (64 if on_cpu else 4096)
    bucket_multiple = bucket_multiple or (8 if on_cpu else 32)
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("world_size > 1 needs torch.distributed to be initialized")
    my_indices = shard_indices(len(examples), rank, world_size)

    # tokenize this rank's examples only; flatten into 4 rows per example
    enc = get_encoder()
    labels, row_tokens, ctx_lens = [], [], []
    for i in my_indices:
        ctx, ends, label = tokenize_example(examples[i], enc)
        _check_label(label, i)
        if len(ends) != 4:
            raise ValueError(f"example {i} has {len(ends)} endings, expected 4")
        labels.append(label)
        for end in ends:
            row_tokens.append(ctx + end)
            ctx_lens.append(len(ctx))
    n_rows = len(row_tokens)
    row_lengths = np.array([len(r) for r in row_tokens], dtype=np.int64)

    cap = _model_block_size(model)
    if cap is not None and n_rows and row_lengths.max() > cap:
        raise ValueError(f"a HellaSwag row has {row_lengths.max()} tokens, more than the model's "
                         f"block size {cap}")
    rows_per_batch = 4 * batch_size
    batches = plan_batches(row_lengths, rows_per_batch, bucket_multiple, cap)
    # ending-token counts per row are known up front (position 0 is never scored)
    row_counts = row_lengths - np.maximum(np.array(ctx_lens, dtype=np.int64), 1)

    was_training = model.training
    model.eval()
    # per-row sums stay on the device: no host sync until the very end
    row_loss = torch.zeros(n_rows, dtype=torch.float32, device=device)
    try:
        for row_ids, T in tqdm(batches, desc="hellaswag", disable=not progress or rank != 0):
            idx, flat_pos, targets, owners = _build_batch(row_ids, T, rows_per_batch, row_tokens, ctx_lens)
            # one host->device copy per batch, from pinned memory so it is truly async: a copy
            # from pageable memory waits for the GPU to drain, and the CPU could not run ahead
            packed = torch.from_numpy(np.concatenate([idx.ravel(), flat_pos, targets, owners]))
            if on_cuda:
                packed = packed.pin_memory()
            packed = packed.to(device, non_blocking=True)
            n_idx, n_sel = idx.size, flat_pos.size
            idx = packed[:n_idx].view(rows_per_batch, T)  # (B, T)
            flat_pos, targets, owners = packed[n_idx:].view(3, n_sel)  # (N_sel,) each
            with _autocast(device, autocast_dtype):
                logits, _ = model(idx)  # (B, T, V)
            logits = logits.reshape(-1, logits.size(-1))  # (B*T, V), a view
            # fp32 cross-entropy only at the scored positions, a chunk at a time
            for s in range(0, flat_pos.numel(), loss_chunk):
                pos = flat_pos[s:s + loss_chunk]
                chunk_logits = logits.index_select(0, pos).float()  # (chunk, V)
                losses = F.cross_entropy(chunk_logits, targets[s:s + loss_chunk], reduction="none")
                row_loss.index_add_(0, owners[s:s + loss_chunk], losses)
            del logits
    finally:
        model.train(was_training)

    # 4 rows per example, in order: pick the ending with the smallest sum / mean loss
    sum_loss = row_loss.cpu().view(-1, 4)  # (N, 4)
    avg_loss = sum_loss / torch.from_numpy(row_counts).float().view(-1, 4)  # (N, 4)
    preds = sum_loss.argmin(dim=1).tolist() if n_rows else []
    preds_norm = avg_loss.argmin(dim=1).tolist() if n_rows else []
    correct = sum(int(p == y) for p, y in zip(preds, labels))
    correct_norm = sum(int(p == y) for p, y in zip(preds_norm, labels))
    n = len(labels)

    if world_size > 1:
        import torch.distributed as dist
        # gloo reduces CPU tensors, nccl CUDA ones
        reduce_device = device if dist.get_backend() == "nccl" else "cpu"
        counts = torch.tensor([n, correct, correct_norm], dtype=torch.long, device=reduce_device)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        n, correct, correct_norm = counts.tolist()

    predictions = list(zip(my_indices, preds, preds_norm)) if return_predictions else None
    return _result(n, correct, correct_norm, time.time() - t0, predictions)

# -----------------------------------------------------------------------------
# command line


def _fail(message):
    print(f"hellaswag.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def _import_train_gpt2():
    """The model code (and device choice) live in train_gpt2.py; imported only by the CLI."""
    try:
        import train_gpt2
    except ImportError as e:
        _fail(f"cannot import train_gpt2 (needed to build the model): {e}")
    return train_gpt2


def _load_model(args, device, train_gpt2):
    """Our GPT from HF weights / a transformers dir (--model) or from a training checkpoint."""
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        _fail(f"checkpoint not found: {args.checkpoint}")
    try:
        if args.checkpoint is not None:
            model = train_gpt2.load_checkpoint_model(args.checkpoint, device)
        else:
            model = train_gpt2.GPT.from_pretrained(args.model)
    except Exception as e:
        what = args.checkpoint if args.checkpoint is not None else args.model
        _fail(f"could not load model {what!r}: {' '.join(str(e).split()) or type(e).__name__}")
    return model.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description="HellaSwag (completion style) eval of a GPT-2 model")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF GPT-2 name (gpt2, gpt2-medium, ...) or a local transformers dir")
    src.add_argument("--checkpoint", help="one of our training checkpoints, e.g. log/model_19073.pt")
    parser.add_argument("--split", default="val", help="val (default) or train")
    parser.add_argument("--limit", type=int, default=None, help="only the first N examples")
    parser.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, cuda:1, cpu, ...")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="examples per forward pass, 4 rows each (default 32 on a GPU, 8 on cpu)")
    parser.add_argument("--compile", type=int, default=0, help="1: torch.compile the model")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 autocast on cuda, else fp32), float32 or bfloat16")
    parser.add_argument("--data_dir", default=None, help="cache dir of the jsonl files (default $HELLASWAG_DIR or hellaswag/)")
    parser.add_argument("--reference", action="store_true", help="use the slow one-example-at-a-time loop")
    args = parser.parse_args(argv)

    if args.split not in ("train", "val"):
        _fail(f"unknown split {args.split!r}: use val or train (the test split has no labels)")
    if args.limit is not None and args.limit < 1:
        _fail("--limit must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        _fail("--batch_size must be >= 1")
    if args.dtype not in ("auto", "float32", "bfloat16"):
        _fail(f"unknown --dtype {args.dtype!r}: use auto, float32 or bfloat16")
    train_gpt2 = _import_train_gpt2()
    device = train_gpt2.choose_device(args.device, local_rank=0)
    device_type = torch.device(device).type
    if device_type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {device} but CUDA is not available")
    autocast_dtype = None
    if args.dtype == "bfloat16" or (args.dtype == "auto" and device_type == "cuda"):
        autocast_dtype = torch.bfloat16

    try:
        examples = load_examples(args.split, args.data_dir, args.limit)
    except (HellaSwagDataError, ValueError, OSError, json.JSONDecodeError) as e:
        _fail(" ".join(str(e).split()))
    model = _load_model(args, device, train_gpt2)
    if args.compile:
        model = torch.compile(model)

    try:
        if args.reference:
            result = evaluate_reference(model, examples, device, autocast_dtype=autocast_dtype, progress=True)
        else:
            result = evaluate(model, examples, device, batch_size=args.batch_size,
                              autocast_dtype=autocast_dtype, progress=True)
    except ValueError as e:
        _fail(" ".join(str(e).split()))
    print(f"hellaswag {args.split}: {result['num_correct_norm']}/{result['examples']} "
          f"acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}, {result['seconds']:.1f} s")
    print(json.dumps({"examples": result["examples"], "acc": result["acc"],
                      "acc_norm": result["acc_norm"], "seconds": round(result["seconds"], 3)}))


if __name__ == "__main__":
    main()
