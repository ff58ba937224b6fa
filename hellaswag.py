"""
HellaSwag evaluation for GPT-2 style models, completion style (as in the GPT-2 / GPT-3 papers
and build-nanogpt): the context is fed to the model, and each of the 4 candidate endings is
scored by the language-model loss of its tokens. The ending with the lowest loss is the pick.

    acc       pick = ending with the smallest SUM of its token losses
    acc_norm  pick = ending with the smallest MEAN loss per ending token (the headline number)

Rows longer than the model's block size: every example is still scored; a row (context + ending)
longer than max_len keeps its last max_len tokens (the context is cut from the left), and only the
ending tokens that still have a token before them are scored.

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
import hashlib
import json
import os
import sys
import time
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F

import train_gpt2  # model, devices, dtypes, tokenizer, atomic writes: one copy, shared with the trainer

# the one exception class for user-facing errors: the trainer prints it as one `error:` line too
UserError = train_gpt2.UserError


# the rule for rows that are too long, as the module docstring says it (the trainer's --help repeats it)
TRUNCATION_RULE = ("every example is still scored; a row (context + ending) longer than max_len keeps its last "
                   "max_len tokens (the context is cut from the left), and only the ending tokens that still "
                   "have a token before them are scored")


# should_stop() returned True: the eval stopped early and has no result (the trainer's class)
Interrupted = train_gpt2.Interrupted


# -----------------------------------------------------------------------------
# data: download once into a cache dir, then read from there

SPLITS = ("train", "val", "test")
DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
# sha256 of the official val file; a fresh download of val must match it
KNOWN_SHA256 = {"val": "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"}


def default_data_dir():
    env = os.environ.get("HELLASWAG_DIR")
    if env:
        return env
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "hellaswag")


def split_path(split, data_dir=None):
    if split not in SPLITS:
        raise UserError(f"unknown HellaSwag split {split!r}; use val or train (test has no labels)")
    return os.path.join(data_dir or default_data_dir(), f"hellaswag_{split}.jsonl")


def _one_line(e):
    """An exception as one line of text, for error messages."""
    return " ".join(str(e).split()) or type(e).__name__


def _fetch(url, out_path, expected_sha256=None, chunk_size=1 << 20):
    """Stream url into out_path; raise OSError when fewer bytes than Content-Length arrived or
    the sha256 differs, so atomic_write throws the partial file away."""
    sha = hashlib.sha256()
    n_bytes = 0
    with urllib.request.urlopen(url, timeout=60) as resp, open(out_path, "wb") as f:
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


def download_file(url, path, expected_sha256=None, chunk_size=1 << 20):
    """Download url to path. The final name appears only when the download is complete and its
    checks passed (train_gpt2.atomic_write: temp file, fsync, rename; temp removed on failure),
    so an interrupted or truncated download never leaves a file that looks finished."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    train_gpt2.atomic_write(path, lambda tmp: _fetch(url, tmp, expected_sha256, chunk_size))


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
        raise UserError(f"could not download {url} ({_one_line(e)}); place hellaswag_{split}.jsonl in "
                        f"{os.path.abspath(data_dir)} or set HELLASWAG_DIR to a dir that has it") from None
    return path

# -----------------------------------------------------------------------------
# validation: bad data fails up front with the line to fix, never mid-run


def _json_type(value):
    """The JSON name of a parsed value's type, for messages about a jsonl line."""
    names = {dict: "a JSON object", list: "a JSON array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_label(value):
    """The label as an int 0..3 (an int, or a digit string as some copies of the data have),
    else None."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 4:
        return value
    return None


def example_problem(example, need_label=True):
    """What is wrong with one example (a parsed jsonl line), as a phrase that reads after a colon;
    None if it is usable."""
    if not isinstance(example, dict):
        return f'{_json_type(example)}, expected a JSON object with "ctx", "endings" and "label"'
    for key in ("ctx", "endings") + (("label",) if need_label else ()):
        if key not in example:
            return f'no "{key}" key'
    ctx, endings = example["ctx"], example["endings"]
    if not isinstance(ctx, str):
        return f'"ctx" is {_json_type(ctx)}, expected a string'
    if not ctx:
        # the first ending token would have nothing before it to be predicted from
        return '"ctx" is empty'
    if not isinstance(endings, list):
        return f'"endings" is {_json_type(endings)}, expected a list of 4 strings'
    if len(endings) != 4:
        return f'"endings" has {len(endings)} entries, expected 4'
    for i, ending in enumerate(endings):
        if not isinstance(ending, str):
            return f'"endings"[{i}] is {_json_type(ending)}, expected a string'
    if need_label and parse_label(example["label"]) is None:
        return f'"label" is {json.dumps(example["label"])}, expected 0, 1, 2 or 3'
    return None


def check_examples(examples):
    """Labels (ints) of in-memory examples; UserError naming the first unusable one. Both
    evaluators call it on ALL examples (on every DDP rank), so they refuse exactly the same
    inputs and all ranks fail together instead of one rank hanging in a collective."""
    labels = []
    for i, example in enumerate(examples):
        problem = example_problem(example)
        if problem is not None:
            hint = " (the HellaSwag test split is unlabeled: use val or train)" if '"label"' in problem else ""
            raise UserError(f"HellaSwag example {i}: {problem}{hint}")
        labels.append(parse_label(example["label"]))
    return labels


def read_examples(path, limit=None, need_label=True):
    """Parse and validate a jsonl file. A bad line is a UserError naming the file and its 1-based
    line number; the labels of usable examples become ints."""
    fix = "fix that line, or delete the file to download it again"
    examples = []
    try:
        with open(path, "rb") as f:  # bytes, so a non-UTF-8 line is reported with its number too
            for line_no, raw in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{path} line {line_no}: not UTF-8 text; {fix}") from None
                if not line.strip():
                    continue
                try:
                    example = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path} line {line_no}: not valid JSON ({e.msg} at column {e.colno}); "
                                    f"{fix}") from None
                problem = example_problem(example, need_label)
                if problem is not None:
                    raise UserError(f"{path} line {line_no}: {problem}; {fix}")
                if need_label:
                    example["label"] = parse_label(example["label"])
                examples.append(example)
    except OSError as e:
        raise UserError(f"cannot read {path} ({_one_line(e)})") from None
    if not examples:
        raise UserError(f"{path} holds no examples; delete it to download it again, "
                        f"or set HELLASWAG_DIR to a dir with a good copy")
    return examples


def load_examples(split="val", data_dir=None, limit=None):
    """The first `limit` (None = all) examples of a split as a list of dicts (keys ctx, endings,
    label as an int, ...), in file order. Validated: see example_problem()."""
    if limit is not None and limit < 1:
        raise UserError(f"limit must be >= 1 (or None for all examples), got {limit}")
    path = ensure_split(split, data_dir)
    return read_examples(path, limit, need_label=split != "test")

# -----------------------------------------------------------------------------
# rendering: exactly as build-nanogpt defines it, plus the rule for rows that are too long


def tokenize_example(example, enc=None):
    """-> (ctx_tokens, [end_tokens x 4], label or None). Each ending gets a leading space because
    in GPT-2's BPE the space belongs to the following word. encode_ordinary == build-nanogpt's
    encode on ordinary text, but a literal "<|endoftext|>" in the data is plain text to it, where
    encode would raise mid-run."""
    enc = enc or train_gpt2.get_encoding()
    ctx_tokens = enc.encode_ordinary(example["ctx"])
    end_tokens = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    return ctx_tokens, end_tokens, parse_label(example.get("label"))


def fit_row(ctx_tokens, end_tokens, max_len=None):
    """-> (row, n_ctx): context + ending, and how many of its first tokens are context. A row
    longer than max_len keeps its last max_len tokens, so the context is cut from the left (as
    lm-evaluation-harness does for loglikelihood requests: HFLM._loglikelihood_tokens keeps
    (context_enc + continuation_enc)[-(max_length + 1):][:-1]; it can keep one token more because
    it never feeds the last token, we feed whole rows). An ending longer than max_len loses its
    own first tokens too (n_ctx = 0)."""
    row = ctx_tokens + end_tokens
    n_ctx = len(ctx_tokens)
    if max_len is not None and len(row) > max_len:
        cut = len(row) - max_len
        row = row[cut:]
        n_ctx = max(n_ctx - cut, 0)
    return row, n_ctx


def count_truncated(examples, max_len, enc=None):
    """How many examples have at least one row (context + ending) longer than max_len, i.e. are
    scored on a context cut from the left. 0 when max_len is None (no limit)."""
    if max_len is None:
        return 0
    enc = enc or train_gpt2.get_encoding()
    n = 0
    for example in examples:
        # a GPT-2 token covers at least one byte: a row with <= max_len bytes needs no tokenizing
        # (at block size 1024 that is every HellaSwag row, so the trainer's up-front count is free)
        n_bytes = len(example["ctx"].encode()) + 1 + max(len(e.encode()) for e in example["endings"])
        if n_bytes <= max_len:
            continue
        ctx_tokens, end_tokens, _ = tokenize_example(example, enc)
        n += int(len(ctx_tokens) + max(len(end) for end in end_tokens) > max_len)
    return n


def render_example(example, enc=None, max_len=None):
    """-> tokens (4, T) int64, mask (4, T) int64, label. Row i = context + ending i (cut to its
    last max_len tokens, see fit_row), right-padded with 0 to the longest row; mask is 1 over the
    ending tokens that remain. The evaluators score mask[:, 1:]: position 0 has no logits before it."""
    ctx_tokens, end_tokens, label = tokenize_example(example, enc)
    rows = [fit_row(ctx_tokens, end, max_len) for end in end_tokens]
    T = max(len(row) for row, _ in rows)
    tokens = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (row, n_ctx) in enumerate(rows):
        tokens[i, :len(row)] = torch.tensor(row)
        mask[i, n_ctx:len(row)] = 1
    return tokens, mask, label

# -----------------------------------------------------------------------------
# shared evaluation helpers

STOP_CHECK_EVERY = train_gpt2.STOP_CHECK_EVERY  # should_stop() is called every this many forwards


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


def resolve_max_len(model, max_len=None):
    """max_len as both evaluators use it: None = the model's block size, or no limit when the
    model does not expose one."""
    if max_len is None:
        max_len = _model_block_size(model)
    if max_len is not None and max_len < 2:
        raise UserError(f"max_len must be >= 2 (one context token plus one scored token), got {max_len}")
    return max_len


def _autocast(dtype, device):
    """The trainer's autocast for a dtype name (auto / bf16 / fp16 / fp32)."""
    if dtype not in train_gpt2.DTYPES:
        # autocast_ctx would silently run fp32 for anything else (e.g. torch.bfloat16)
        raise UserError(f"dtype {dtype!r}: use one of {', '.join(train_gpt2.DTYPES)}")
    dtype = train_gpt2.choose_dtype(dtype, device)
    return train_gpt2.autocast_ctx(device.type, dtype)


def _check_stop(should_stop):
    if should_stop is not None and should_stop():
        raise Interrupted("HellaSwag eval stopped early: should_stop() returned True")


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
def evaluate_reference(model, examples, device, *, dtype="fp32", max_len=None, should_stop=None,
                       return_predictions=False, progress=False):
    """The anchor's algorithm: one example = one (4, T) forward pass, uncompiled shapes.
    Slow; kept as the ground truth that evaluate() must match. Arguments as evaluate();
    should_stop is called every STOP_CHECK_EVERY examples. predictions: (index, pred, pred_norm)."""
    from tqdm import tqdm
    t0 = time.time()
    device = torch.device(device)
    labels = check_examples(examples)
    max_len = resolve_max_len(model, max_len)
    amp = _autocast(dtype, device)
    enc = train_gpt2.get_encoding()
    was_training = model.training
    model.eval()
    correct = correct_norm = 0
    predictions = []
    try:
        for i, example in enumerate(tqdm(examples, desc="hellaswag (reference)", disable=not progress)):
            if i % STOP_CHECK_EVERY == 0:
                _check_stop(should_stop)
            tokens, mask, _ = render_example(example, enc, max_len)
            tokens, mask = tokens.to(device), mask.to(device)
            with amp:
                logits, _ = model(tokens)  # (4, T, V)
            # the loss of token t comes from the logits at t-1
            shift_logits = logits[:, :-1, :].float()  # (4, T-1, V)
            shift_tokens = tokens[:, 1:]  # (4, T-1)
            losses = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                     shift_tokens.reshape(-1), reduction="none")
            losses = losses.view(tokens.size(0), -1)  # (4, T-1)
            shift_mask = mask[:, 1:].float()  # (4, T-1), 1 on the scored ending tokens
            sum_loss = (losses * shift_mask).sum(dim=1)  # (4,)
            avg_loss = sum_loss / shift_mask.sum(dim=1)  # (4,)
            pred = int(sum_loss.argmin().item())
            pred_norm = int(avg_loss.argmin().item())
            correct += int(pred == labels[i])
            correct_norm += int(pred_norm == labels[i])
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


def num_batch_slots(n_examples, world_size, batch_size):
    """Forward passes of the busiest rank: rank 0's shard has ceil(n / world_size) examples and
    every batch holds batch_size of them (4*batch_size rows), so every rank knows this number
    without tokenizing the other shards."""
    most = -(-n_examples // world_size)
    return -(-most // batch_size)


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
        # ending token t is predicted by the logits at t-1; like the reference, position 0 is never
        # scored (it has no logits before it), which matters when a cut row starts inside its ending
        start = max(ctx_lens[r], 1)
        t = np.arange(start, len(toks))
        flat_pos.append(b * T + t - 1)
        targets.append(np.asarray(toks[start:], dtype=np.int64))
        owners.append(np.full(len(t), r, dtype=np.int64))
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)
    return idx, cat(flat_pos), cat(targets), cat(owners)


@torch.no_grad()
def evaluate(model, examples, device, *, dtype="fp32", rank=0, world_size=1, batch_size=None,
             max_len=None, should_stop=None, progress=False, return_predictions=False,
             bucket_multiple=None, loss_chunk=None):
    """Batched HellaSwag eval. Same predictions as evaluate_reference(), much faster.

    model: called as `logits, _ = model(idx)` with idx (B, T) int64 (plain, torch.compile'd or
        DDP-unwrapped module). Its training mode is restored afterwards.
    dtype: the trainer's name, "fp32" (no autocast), "bf16", "fp16" or "auto" (train_gpt2.choose_dtype);
        the losses are always computed in fp32.
    rank, world_size: with world_size > 1 (torch.distributed initialized) this rank evaluates
        examples[rank::world_size] and counts are all-reduced, so every rank returns the global
        result. Its "predictions" (if asked for) are only this rank's.
    batch_size: examples per forward pass (default 32 on a GPU, 8 on CPU); every forward has
        exactly 4*batch_size rows and a length T that is a multiple of bucket_multiple.
    max_len: longest row fed to the model, default the model's block size (None when it has none
        = no limit); longer rows are cut from the left (fit_row), exactly as evaluate_reference.
    should_stop: optional, called with no arguments on every rank the same number of times (every
        STOP_CHECK_EVERY batch slots), so it may be a collective; when it returns True this raises
        Interrupted (training mode restored, no result).
    bucket_multiple: default 32 on a GPU, so a compiled model sees few shapes (HellaSwag val:
        T in {32, 64, ..., 192}, 6 shapes, fewer than dynamo's recompile limit of 8 even with
        dynamic=False), at ~17% padding. Default 8 on CPU, where compute dominates and the
        padding cost more than the shapes (GPT-2 124M: 16% slower with 32).
    loss_chunk: scored positions per fp32 cross-entropy chunk; bounds the memory of the fp32
        copy of the logits to loss_chunk * vocab * 4 bytes. Default 4096 on a GPU (about one chunk
        per batch), 64 on CPU (there, buffers over 32 MB are fresh mmaps that page-fault on every
        use, which made the gather 5x slower).
    -> {"examples", "acc", "acc_norm", "num_correct", "num_correct_norm", "seconds"
        [, "predictions": [(index, pred, pred_norm), ...]]}
    """
    from tqdm import tqdm
    t0 = time.time()
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    if batch_size is not None and batch_size < 1:
        raise UserError(f"HellaSwag batch size must be >= 1, got {batch_size}")
    batch_size = batch_size or (8 if on_cpu else 32)
    loss_chunk = loss_chunk or (64 if on_cpu else 4096)
    bucket_multiple = bucket_multiple or (8 if on_cpu else 32)
    if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("world_size > 1 needs torch.distributed to be initialized")
    all_labels = check_examples(examples)  # every rank checks every example: all fail, or none
    max_len = resolve_max_len(model, max_len)
    amp = _autocast(dtype, device)
    my_indices = shard_indices(len(examples), rank, world_size)

    # tokenize this rank's examples only; flatten into 4 rows per example
    enc = train_gpt2.get_encoding()
    labels, row_tokens, ctx_lens = [], [], []
    for i in my_indices:
        ctx, ends, _ = tokenize_example(examples[i], enc)
        labels.append(all_labels[i])
        for end in ends:
            row, n_ctx = fit_row(ctx, end, max_len)
            row_tokens.append(row)
            ctx_lens.append(n_ctx)
    n_rows = len(row_tokens)
    row_lengths = np.array([len(r) for r in row_tokens], dtype=np.int64)
    rows_per_batch = 4 * batch_size
    batches = plan_batches(row_lengths, rows_per_batch, bucket_multiple, max_len)
    # every rank walks the same number of batch slots, so should_stop (a collective) is called
    # equally often everywhere; a rank with fewer batches idles through the last slots
    n_slots = num_batch_slots(len(examples), world_size, batch_size)
    assert len(batches) <= n_slots
    # ending-token counts per row are known up front (position 0 is never scored)
    row_counts = row_lengths - np.maximum(np.array(ctx_lens, dtype=np.int64), 1)

    was_training = model.training
    model.eval()
    # per-row sums stay on the device: no host sync until the very end
    row_loss = torch.zeros(n_rows, dtype=torch.float32, device=device)
    try:
        for slot in tqdm(range(n_slots), desc="hellaswag", disable=not progress or rank != 0):
            if slot % STOP_CHECK_EVERY == 0:
                _check_stop(should_stop)
            if slot >= len(batches):
                continue
            row_ids, T = batches[slot]
            idx, flat_pos, targets, owners = _build_batch(row_ids, T, rows_per_batch, row_tokens, ctx_lens)
            packed = train_gpt2.to_device(torch.from_numpy(np.concatenate([idx.ravel(), flat_pos, targets, owners])), device)
            n_idx, n_sel = idx.size, flat_pos.size
            idx = packed[:n_idx].view(rows_per_batch, T)  # (B, T)
            flat_pos, targets, owners = packed[n_idx:].view(3, n_sel)  # (N_sel,) each
            with amp:
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


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # the project's rule: one `error:` line and exit 1, instead of argparse's usage + exit 2
        raise UserError(f"{message} (see --help)")


def build_parser():
    p = _Parser(description="HellaSwag (completion style) eval of a GPT-2 model. The last stdout line is "
                            "JSON: examples, acc, acc_norm, seconds.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF GPT-2 name (gpt2, gpt2-medium, ...) or a local transformers dir")
    src.add_argument("--checkpoint", help="one of our training checkpoints, e.g. log/model_19073.pt")
    p.add_argument("--split", default="val", choices=["val", "train"], help="the test split has no labels")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples (None: all)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=list(train_gpt2.DTYPES),
                   help="as the trainer's --dtype: auto = bf16 on CUDA (compute capability >= 8), fp16 on "
                        "older CUDA, fp32 on CPU/MPS; fp32 = no autocast")
    p.add_argument("--batch_size", type=int, default=None,
                   help="examples per forward pass, 4 rows each (None: 32 on a GPU, 8 on CPU)")
    p.add_argument("--compile", type=int, default=0, choices=[0, 1], help="1: torch.compile the model")
    p.add_argument("--data_dir", default=default_data_dir(),
                   help="cache dir of the jsonl files ($HELLASWAG_DIR, else hellaswag/ beside this script)")
    p.add_argument("--reference", action="store_true", help="use the slow one-example-at-a-time loop")
    return p


def get_args(argv=None):
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def load_checkpoint(path, device):
    """Our GPT from a training checkpoint, or a UserError saying why the file is not one (the
    trainer's read_checkpoint checks the file, for --resume and here alike)."""
    hint = "pass a log/model_NNNNN.pt written by train_gpt2.py"
    try:
        return train_gpt2.load_checkpoint_model(path, device)
    except UserError as e:
        raise UserError(f"--checkpoint: {e}; {hint}") from None
    except Exception as e:  # a readable checkpoint whose weights do not fit its config
        raise UserError(f"--checkpoint {path}: cannot load it ({_one_line(e)}); {hint}") from None


def load_pretrained(name, device):
    """Our GPT with HF weights (a GPT-2 name) or a local transformers dir, or a UserError."""
    try:
        model = train_gpt2.GPT.from_pretrained(name)
    except Exception as e:
        raise UserError(f"--model {name}: cannot load it ({_one_line(e)}); give a GPT-2 name cached "
                        f"by transformers or a local transformers dir") from None
    return model.to(device)


def load_model(args, device):
    """Our GPT from a training checkpoint (--checkpoint) or HF weights / a transformers dir (--model)."""
    if args.checkpoint is not None:
        return load_checkpoint(args.checkpoint, device)
    return load_pretrained(args.model, device)


def run(argv=None):
    args = get_args(argv)
    device = train_gpt2.resolve_device(args.device, local_rank=0)
    dtype = train_gpt2.choose_dtype(args.dtype, device)
    examples = load_examples(args.split, args.data_dir, args.limit)  # bad data fails before the model loads
    model = load_model(args, device)
    max_len = _model_block_size(model)
    n_cut = count_truncated(examples, max_len)
    if n_cut:
        print(f"note: {n_cut} of {len(examples)} examples have rows longer than the block size {max_len}; "
              f"their contexts are cut from the left")
    if args.compile:
        model = torch.compile(model)
    kwargs = {"dtype": dtype, "max_len": max_len, "progress": True}
    if args.reference:
        result = evaluate_reference(model, examples, device, **kwargs)
    else:
        result = evaluate(model, examples, device, batch_size=args.batch_size, **kwargs)
    print(f"hellaswag {args.split}: {result['num_correct_norm']}/{result['examples']} "
          f"acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}, {result['seconds']:.1f} s "
          f"({device}, {dtype})")
    print(json.dumps({"examples": result["examples"], "acc": result["acc"],
                      "acc_norm": result["acc_norm"], "seconds": round(result["seconds"], 3)}))


def main(argv=None):
    try:
        run(argv)
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
