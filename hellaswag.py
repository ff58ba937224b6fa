"""
HellaSwag eval of GPT-2 style language models, completion style (as in the GPT-2 and GPT-3 papers
and build-nanogpt): the context is fed to the model and each of the 4 endings is scored by the
loss of its tokens. acc picks the ending with the smallest SUM of token losses, acc_norm (the
headline number) the smallest MEAN loss per token. build-nanogpt reports on the 10,042 val
examples: gpt2 (124M) acc 0.2859, acc_norm 0.2955; gpt2-xl acc 0.3842, acc_norm 0.4893.

Rows longer than the model's block size: every example is still scored; a row (context + ending)
longer than max_len keeps its last max_len tokens (the context is cut from the left), and only the
ending tokens that still have a token before them are scored.

evaluate_reference() runs one example (4 rows) per forward pass: slow, the readable ground truth.
evaluate(), which the trainer calls, gives the same predictions faster: rows of many examples per
forward, sorted by length and padded to a few bucket lengths, sharded over DDP ranks.

    python hellaswag.py --model gpt2                 # a Hugging Face name (downloaded once)
    python hellaswag.py --model log/model_19073_hf   # a local transformers folder
The trainer evaluates our checkpoints as it trains; for one afterwards, export it first (`python
train_gpt2.py --export log/model_19073.pt` writes log/model_19073_hf). The last stdout line is
JSON: {"examples": N, "acc": x, "acc_norm": y, "seconds": s}.

Data: https://github.com/rowanz/hellaswag (MIT), downloaded once into hellaswag/ beside this file,
or read from --data_dir / $HELLASWAG_DIR. This file imports nothing from train_gpt2.py.
"""

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
import urllib.request

import numpy as np
import torch
import torch.nn.functional as F

STOP_CHECK_EVERY = 8  # evaluate() calls should_stop() every this many batch slots


class HellaSwagError(Exception):
    """Bad data or a bad argument; the message is one line that says what to do."""


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__

# -----------------------------------------------------------------------------
# data: downloaded once into a cache dir, every line checked before any model runs


DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
KNOWN_SHA256 = {"val": "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"}


def download(url, path, sha256=None):
    """Stream url into a temp file beside path and rename it to path only once it is complete
    (Content-Length), hash-checked and fsync'ed; on any failure delete it. So a cut or corrupt
    download never leaves a file that looks finished."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        digest, n_bytes = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
            expected = resp.headers.get("Content-Length") if resp.headers is not None else None
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
                n_bytes += len(chunk)
            os.fsync(f.fileno())
        if expected is not None and n_bytes != int(expected):
            raise OSError(f"truncated download: got {n_bytes} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise OSError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


def ensure_split(split="val", data_dir=None):
    """Path of a split's file in data_dir (None: $HELLASWAG_DIR, else hellaswag/ beside this
    file), downloaded first only if it is not there."""
    if split not in ("train", "val"):
        raise HellaSwagError(f"unknown HellaSwag split {split!r}; use val or train (test has no "
                             f"labels)")
    here = os.path.dirname(os.path.abspath(__file__))
    data_dir = data_dir or os.environ.get("HELLASWAG_DIR") or os.path.join(here, "hellaswag")
    path = os.path.join(data_dir, f"hellaswag_{split}.jsonl")
    if not os.path.exists(path):
        url = DATA_URL.format(split=split)
        try:
            download(url, path, KNOWN_SHA256.get(split))
        except Exception as e:  # offline, HTTP error, cut short, wrong hash, disk full, ...
            raise HellaSwagError(f"could not download {url} ({_one_line(e)}); put "
                                 f"hellaswag_{split}.jsonl in {os.path.abspath(data_dir)} or set "
                                 f"HELLASWAG_DIR to a folder that has it") from None
    return path


# what each key must hold (an empty context leaves the first ending token nothing to follow)
FIELDS = {"ctx": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
          "endings": (lambda v: isinstance(v, list) and len(v) == 4
                      and all(isinstance(e, str) for e in v), "a list of 4 strings"),
          "label": (lambda v: type(v) is int and 0 <= v < 4, "the number 0, 1, 2 or 3")}


def example_problem(example):
    """What is wrong with one parsed example, as a phrase to follow a colon; None if usable."""
    def shown(value):  # the offending value, as JSON, shortened
        text = json.dumps(value, default=repr)
        return text if len(text) <= 60 else text[:56] + " ..."
    if not isinstance(example, dict):
        return f"{shown(example)} is not a JSON object with keys {', '.join(FIELDS)}"
    for key, (ok, wanted) in FIELDS.items():
        if key not in example:
            return f'no "{key}" key'
        if not ok(example[key]):
            return f'"{key}" is {shown(example[key])}, expected {wanted}'
    return None


def load_examples(split="val", data_dir=None, limit=None):
    """The first `limit` (None = all) examples of a split, in file order, as dicts (ctx, endings,
    label, ...). A bad line is a HellaSwagError naming the file and the line."""
    if limit is not None and limit < 1:
        raise HellaSwagError(f"limit must be >= 1 (or None for all examples), got {limit}")
    path = ensure_split(split, data_dir)
    examples = []
    try:
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported by number too
            for line_no, line in enumerate(f, start=1):
                if limit is not None and len(examples) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    examples.append(json.loads(line.decode("utf-8")))
                    problem = example_problem(examples[-1])
                except UnicodeDecodeError:
                    problem = "not UTF-8 text"
                except json.JSONDecodeError as e:
                    problem = f"not valid JSON ({e.msg} at column {e.colno})"
                if problem:
                    raise HellaSwagError(f"{path} line {line_no}: {problem}; fix that line, or "
                                         f"delete the file to download it again")
    except OSError as e:
        raise HellaSwagError(f"cannot read {path} ({_one_line(e)})") from None
    if not examples:
        raise HellaSwagError(f"{path} holds no examples; delete it to download it again, or set "
                             f"HELLASWAG_DIR to a folder with a good copy")
    return examples

# -----------------------------------------------------------------------------
# rendering: build-nanogpt's completion style, plus the rule for rows that are too long


def tokenize_example(example):
    """-> (ctx_tokens, [end_tokens x 4]). An ending gets a leading space because GPT-2's BPE
    attaches a space to the word after it. encode_ordinary reads a literal "<|endoftext|>" in the
    data as text, where encode would raise mid-run."""
    try:
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")  # tiktoken keeps it after the first call
    except Exception as e:
        raise HellaSwagError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); set "
                             f"TIKTOKEN_CACHE_DIR to a folder with its cached GPT-2 files, or "
                             f"connect to the internet once") from None
    ends = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    return enc.encode_ordinary(example["ctx"]), ends


def fit_row(ctx_tokens, end_tokens, max_len=None):
    """-> (row, n_ctx): context + ending, and how many of its first tokens are context. A row
    longer than max_len keeps its last max_len tokens: the context is cut from the left (as
    lm-evaluation-harness does for loglikelihood requests), and an ending longer than max_len
    loses its own first tokens too (n_ctx = 0)."""
    row, n_ctx = ctx_tokens + end_tokens, len(ctx_tokens)
    if max_len is not None and len(row) > max_len:
        cut = len(row) - max_len
        row, n_ctx = row[cut:], max(n_ctx - cut, 0)
    return row, n_ctx


def count_truncated(examples, max_len):
    """How many examples have a row longer than max_len (None = no limit: 0)."""
    n = 0
    for example in examples if max_len is not None else []:
        # a GPT-2 token covers at least one byte: a row of <= max_len bytes needs no tokenizing
        # (at block size 1024 that is every HellaSwag row, so the trainer's count is free)
        longest_end = max(len(end.encode()) for end in example["endings"])
        if len(example["ctx"].encode()) + 1 + longest_end > max_len:
            ctx, ends = tokenize_example(example)
            n += len(ctx) + max(len(end) for end in ends) > max_len
    return n


# -----------------------------------------------------------------------------
# the two evaluators


def _logits(out):
    """(B, T, V) logits from the logits, a tuple starting with them (our GPT's (logits, None)),
    or an object with .logits (transformers)."""
    return out[0] if isinstance(out, tuple) else getattr(out, "logits", out)


def model_max_len(model):
    """The longest sequence the model's config allows (block_size: our GPT; n_positions:
    transformers' GPT-2; max_position_embeddings: most other transformers models), looked up
    through torch.compile (_orig_mod) and DDP (module) wrappers; None if it does not say."""
    while getattr(model, "config", None) is None:
        inner = getattr(model, "_orig_mod", None)
        model = inner if inner is not None else getattr(model, "module", None)
        if model is None:
            return None
    sizes = [getattr(model.config, key, None)
             for key in ("block_size", "n_positions", "max_position_embeddings")]
    return next((int(size) for size in sizes if size), None)


def _prepare(model, examples, max_len, autocast):
    """The checks both evaluators make first (on every DDP rank, on ALL examples), so they refuse
    the same inputs and all ranks fail together. -> (max_len, autocast context)."""
    for i, example in enumerate(examples):
        if example_problem(example) is not None:
            raise HellaSwagError(f"HellaSwag example {i}: {example_problem(example)}")
    max_len = model_max_len(model) if max_len is None else max_len
    if max_len is not None and max_len < 2:
        raise HellaSwagError(f"max_len must be >= 2 (a context token, a scored one), "
                             f"got {max_len}")
    if autocast is not None and not hasattr(autocast, "__enter__"):
        raise HellaSwagError(f"autocast must be a context manager such as torch.autocast("
                             f"'cuda', dtype=torch.bfloat16), or None; got {autocast!r}")
    return max_len, autocast or contextlib.nullcontext()


def _result(n, correct, correct_norm, t0, predictions=None):
    out = {"examples": n, "acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1),
           "num_correct": correct, "num_correct_norm": correct_norm, "seconds": time.time() - t0}
    return out if predictions is None else dict(out, predictions=predictions)


@torch.no_grad()
def evaluate_reference(model, examples, device, *, autocast=None, max_len=None, progress=False,
                       return_predictions=False):
    """One (4, T) forward pass per example: the ground truth evaluate() must match. Arguments
    and result as evaluate()."""
    from tqdm import tqdm
    t0, device = time.time(), torch.device(device)
    max_len, amp = _prepare(model, examples, max_len, autocast)
    was_training = model.training
    model.eval()
    predictions = []  # (index, pred, pred_norm)
    try:
        for i, example in enumerate(tqdm(examples, desc="hellaswag (ref)", disable=not progress)):
            # row k = context + ending k, padded with 0; mask is 1 over the ending tokens left
            ctx, ends = tokenize_example(example)
            rows = [fit_row(ctx, end, max_len) for end in ends]
            tokens = torch.zeros((4, max(len(row) for row, _ in rows)), dtype=torch.long)
            mask = torch.zeros_like(tokens)
            for k, (row, n_ctx) in enumerate(rows):
                tokens[k, :len(row)] = torch.tensor(row)
                mask[k, n_ctx:len(row)] = 1
            tokens, mask = tokens.to(device), mask.to(device)  # (4, T)
            with amp:
                logits = _logits(model(tokens))  # (4, T, V)
            # the loss of token t comes from the logits at t-1, so position 0 is never scored
            losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                     tokens[:, 1:].flatten(), reduction="none")  # (4*(T-1),)
            sum_loss = (losses.view(4, -1) * mask[:, 1:]).sum(dim=1)  # (4,)
            avg_loss = sum_loss / mask[:, 1:].sum(dim=1)  # (4,)
            predictions.append((i, int(sum_loss.argmin()), int(avg_loss.argmin())))
    finally:
        model.train(was_training)
    correct = sum(pred == ex["label"] for (_, pred, _), ex in zip(predictions, examples))
    correct_norm = sum(pred == ex["label"] for (_, _, pred), ex in zip(predictions, examples))
    return _result(len(examples), correct, correct_norm, t0,
                   predictions if return_predictions else None)


def plan_batches(row_lengths, rows_per_batch, multiple=32, cap=None):
    """-> [(row_ids, T)]: rows sorted longest first, in groups of rows_per_batch, so a batch pads
    little and the first one is the largest (an out-of-memory shows at once, and the allocator's
    cache is sized by it). T: the longest row rounded up to a multiple, capped at max_len."""
    order = np.argsort(-np.asarray(row_lengths), kind="stable")
    batches = []
    for start in range(0, len(order), rows_per_batch):
        ids = order[start:start + rows_per_batch]
        T = math.ceil(row_lengths[ids[0]] / multiple) * multiple
        batches.append((ids, T if cap is None else min(T, cap)))
    return batches


def _build_batch(row_ids, T, rows_per_batch, row_tokens, ctx_lens):
    """-> one int64 array (one host->device copy): idx (rows_per_batch, T) flattened, dummy rows
    all 0; then, for every scored token, its logits' index in (rows_per_batch * T, V), the token
    and its row id."""
    idx = np.zeros((rows_per_batch, T), dtype=np.int64)
    scored, owners = [], []
    for b, r in enumerate(row_ids):
        idx[b, :len(row_tokens[r])] = row_tokens[r]
        # the ending's tokens; position 0 never (nothing before it), as in the reference
        scored.append(b * T + np.arange(max(ctx_lens[r], 1), len(row_tokens[r])))
        owners.append(np.full(len(scored[-1]), r))
    scored = np.concatenate(scored)  # flat positions in idx; token t is predicted at t-1
    return np.concatenate([idx.ravel(), scored - 1, idx.ravel()[scored], np.concatenate(owners)])


@torch.no_grad()
def evaluate(model, examples, device, *, autocast=None, rank=0, world_size=1, batch_size=None,
             max_len=None, should_stop=None, progress=False, return_predictions=False,
             bucket_multiple=None, loss_chunk=None):
    """Batched HellaSwag eval: the same predictions as evaluate_reference(), much faster.

    model(idx), idx (B, T) int64, returns logits (B, T, V), a tuple that starts with them, or an
    object with .logits; its training mode is restored afterwards. autocast: a reusable context
    manager entered around each forward, e.g. torch.autocast("cuda", dtype=torch.bfloat16); the
    losses are fp32. With world_size > 1, this rank evaluates examples[rank::world_size] and the
    counts are all-reduced: every rank returns the global result ("predictions": its own only).
    max_len: the longest row fed to the model (None: model_max_len). should_stop: called on every
    rank at the same batch slots, so it may be a collective; when it returns True -> None.
    -> {"examples", "acc", "acc_norm", "num_correct", "num_correct_norm", "seconds"
        [, "predictions": [(index, pred, pred_norm), ...]]}, or None when stopped.
    Tuning, with their GPU / CPU defaults: batch_size, examples per forward (32 / 8).
    bucket_multiple (32 / 8): row lengths are rounded up to it, so a compiled model sees few
    shapes (val at 32: 6, under dynamo's recompile limit of 8 even with dynamic=False) at ~17%
    padding; on CPU, padding costs more (GPT-2 124M: 16% slower at 32). loss_chunk (4096 / 64):
    scored tokens per fp32 cross-entropy, which bounds the fp32 copy of the logits to
    loss_chunk * V * 4 bytes; on CPU, buffers over 32 MB are fresh mmaps that page-fault on
    every use (5x slower)."""
    from tqdm import tqdm
    t0, device = time.time(), torch.device(device)
    if batch_size is not None and batch_size < 1:
        raise HellaSwagError(f"HellaSwag batch size must be >= 1, got {batch_size}")
    if world_size > 1 and not torch.distributed.is_initialized():
        raise HellaSwagError("world_size > 1 needs torch.distributed to be initialized first")
    gpu = device.type != "cpu"
    B = 4 * (batch_size or (32 if gpu else 8))  # rows per forward
    multiple, chunk = bucket_multiple or (32 if gpu else 8), loss_chunk or (4096 if gpu else 64)
    max_len, amp = _prepare(model, examples, max_len, autocast)

    mine = range(rank, len(examples), world_size)  # this rank's examples
    rows = []  # (tokens, n_ctx); row 4*j + k is ending k of this rank's j-th example
    for i in mine:
        ctx, ends = tokenize_example(examples[i])
        rows += [fit_row(ctx, end, max_len) for end in ends]
    row_tokens = [row for row, _ in rows]
    ctx_lens = np.array([n_ctx for _, n_ctx in rows], dtype=np.int64)
    row_lengths = np.array([len(row) for row in row_tokens], dtype=np.int64)
    batches = plan_batches(row_lengths, B, multiple, max_len)
    # every rank walks as many slots as the busiest one (rank 0), so should_stop is called
    # equally often everywhere; a rank with fewer batches idles through its last ones
    n_slots = math.ceil(math.ceil(len(examples) / world_size) * 4 / B)

    was_training = model.training
    model.eval()
    row_loss = torch.zeros(len(rows), device=device)  # fp32 sums stay on the device to the end
    try:
        for slot in tqdm(range(n_slots), desc="hellaswag", disable=not progress or rank != 0):
            if should_stop is not None and slot % STOP_CHECK_EVERY == 0 and should_stop():
                return None
            if slot >= len(batches):
                continue
            row_ids, T = batches[slot]
            packed = torch.from_numpy(_build_batch(row_ids, T, B, row_tokens, ctx_lens))
            # CUDA: from pinned memory with non_blocking, the copy overlaps the GPU's queued work
            # (no host sync). MPS and CPU: a plain copy, as non_blocking from unpinned memory on
            # MPS has been reported to corrupt data silently (pytorch/pytorch#139550)
            cuda = device.type == "cuda"
            packed = (packed.pin_memory() if cuda else packed).to(device, non_blocking=cuda)
            idx = packed[:B * T].view(B, T)
            positions, targets, owners = packed[B * T:].view(3, -1)  # (N,) each
            with amp:
                logits = _logits(model(idx)).flatten(0, 1)  # (B*T, V)
            # fp32 cross-entropy at the scored positions only, a chunk at a time
            for s in range(0, positions.numel(), chunk):
                scored = logits.index_select(0, positions[s:s + chunk]).float()  # (chunk, V)
                losses = F.cross_entropy(scored, targets[s:s + chunk], reduction="none")
                row_loss.index_add_(0, owners[s:s + chunk], losses)
            del logits
    finally:
        model.train(was_training)

    sum_loss = row_loss.cpu().view(-1, 4)  # (N, 4): the one host sync
    n_scored = row_lengths - np.maximum(ctx_lens, 1)  # position 0 is never scored
    preds = sum_loss.argmin(dim=1).tolist()
    preds_norm = (sum_loss / torch.from_numpy(n_scored).view(-1, 4)).argmin(dim=1).tolist()
    labels = [examples[i]["label"] for i in mine]
    counts = [len(labels), sum(p == y for p, y in zip(preds, labels)),
              sum(p == y for p, y in zip(preds_norm, labels))]
    if world_size > 1:
        dist = torch.distributed  # gloo reduces CPU tensors, nccl CUDA ones
        counts = torch.tensor(counts, device=device if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(counts)
        counts = counts.tolist()
    predictions = list(zip(mine, preds, preds_norm)) if return_predictions else None
    return _result(*counts, t0, predictions)

# -----------------------------------------------------------------------------
# command line: any transformers causal LM that uses GPT-2's tokenizer


AUTOCAST = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 1, not argparse's usage + exit 2
        raise HellaSwagError(f"{message} (see --help)")


def build_parser():
    p = _Parser(description="HellaSwag eval (completion style) of a transformers causal LM with "
                "GPT-2's tokenizer. For our training checkpoints, run `python train_gpt2.py "
                "--export CKPT` first and pass --model CKPT_hf. The last stdout line is JSON: "
                "examples, acc, acc_norm, seconds.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--model", required=True, help="a Hugging Face name (gpt2, gpt2-xl, ...) or a local "
        "transformers folder, e.g. log/model_19073_hf from train_gpt2.py --export")
    add("--split", default="val", choices=["val", "train"], help="test has no labels")
    add("--limit", type=int, default=None, help="only the first N examples (None: all)")
    add("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    add("--dtype", default="auto", choices=list(AUTOCAST), help="autocast: auto = bf16 on CUDA "
        "with compute capability >= 8, fp16 on older CUDA, fp32 (none) on CPU and MPS")
    add("--batch_size", type=int, default=None,
        help="examples per forward pass, 4 rows each (None: 32 on a GPU, 8 on CPU)")
    add("--compile", type=int, default=0, choices=[0, 1], help="1: torch.compile the model")
    add("--data_dir", default=None,
        help="folder of the jsonl files (None: $HELLASWAG_DIR, else hellaswag/ beside this file)")
    add("--reference", action="store_true", help="the slow one-example-at-a-time loop")
    return p


def resolve_device(name):
    """--device -> a torch.device that this machine has."""
    mps = torch.backends.mps.is_available()
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if name == "auto":
        name = "cuda" if n_cuda else "mps" if mps else "cpu"
    kind, colon, index = name.partition(":")
    cuda_ok = (index.isdigit() and int(index) < n_cuda) if colon else n_cuda > 0
    if not {"cpu": not colon, "mps": mps and not colon, "cuda": cuda_ok}.get(kind):
        raise HellaSwagError(f"--device {name}: not available here ({n_cuda} CUDA devices"
                             f"{', MPS' if mps else ''}); use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def choose_autocast(dtype, device):
    """--dtype -> (its name after auto, the autocast context or None)."""
    if dtype == "auto":  # bf16 is emulated on CUDA cards older than compute capability 8
        major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 0
        dtype = "fp32" if device.type != "cuda" else "bf16" if major >= 8 else "fp16"
    return dtype, torch.autocast(device.type, dtype=AUTOCAST[dtype]) if AUTOCAST[dtype] else None


def load_model(name, device):
    """A transformers causal LM, fp32 weights, eval mode, from a hub name or a local folder."""
    if os.path.exists(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise HellaSwagError(f"--model {name}: not a transformers model folder (no config.json); "
                             f"to evaluate a training checkpoint, export it first with python "
                             f"train_gpt2.py --export CKPT and pass the folder it writes")
    try:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as e:
        raise HellaSwagError(f"--model {name}: cannot load it ({_one_line(e)[:300]}); give a "
                             f"Hugging Face name or a local transformers folder") from None
    if getattr(model.config, "vocab_size", 0) < 50257:  # the examples are GPT-2 BPE tokens
        raise HellaSwagError(f"--model {name}: its vocab is smaller than GPT-2's 50257 tokens")
    model.config.use_cache = False  # no key/value cache: each row is scored in one forward
    return model.to(device).eval()


def run(argv=None):
    args = build_parser().parse_args(argv)
    for flag in ("limit", "batch_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise HellaSwagError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    device = resolve_device(args.device)
    dtype, amp = choose_autocast(args.dtype, device)
    examples = load_examples(args.split, args.data_dir, args.limit)  # bad data: before the model
    model = load_model(args.model, device)
    max_len = model_max_len(model)
    if n_cut := count_truncated(examples, max_len):
        print(f"note: {n_cut} of {len(examples)} examples have rows longer than the block size "
              f"{max_len}; their contexts are cut from the left")
    model = torch.compile(model) if args.compile else model
    kwargs = {"autocast": amp, "max_len": max_len, "progress": True}
    if args.reference:
        result = evaluate_reference(model, examples, device, **kwargs)
    else:
        result = evaluate(model, examples, device, batch_size=args.batch_size, **kwargs)
    print(f"hellaswag {args.split}: {result['num_correct_norm']}/{result['examples']} acc_norm "
          f"{result['acc_norm']:.4f}, acc {result['acc']:.4f}, {result['seconds']:.1f} s "
          f"({device}, {dtype})")
    print(json.dumps({"examples": result["examples"], "acc": result["acc"],
                      "acc_norm": result["acc_norm"], "seconds": round(result["seconds"], 3)}))


def main(argv=None):
    try:
        run(argv)
    except HellaSwagError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
