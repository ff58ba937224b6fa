"""
HellaSwag eval of GPT-2 style language models, completion style (as in the GPT-2 and GPT-3 papers
and build-nanogpt): each of the 4 endings is scored by the loss of its tokens after the context.
acc picks the ending with the smallest SUM of token losses, acc_norm (the headline number) the
smallest MEAN. build-nanogpt on the 10,042 val examples: gpt2 (124M) acc 0.2859, acc_norm 0.2955;
gpt2-xl acc 0.3842, acc_norm 0.4893. Two evaluators: a readable reference, a fast batched one.

    python hellaswag.py --model gpt2                # a Hugging Face name (downloaded once)
    python hellaswag.py --model log/model_19073_hf  # train_gpt2.py --export log/model_19073.pt
The last stdout line is JSON: {"examples": N, "acc": x, "acc_norm": y, "seconds": s}.
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


def is_out_of_memory(e):
    """CUDA's OutOfMemoryError, numpy's MemoryError or the CPU allocator's RuntimeError."""
    return (isinstance(e, (torch.OutOfMemoryError, MemoryError))
            or "DefaultCPUAllocator: can't allocate memory" in str(e))

# -----------------------------------------------------------------------------
# data: downloaded once into a cache dir, every line checked before any model runs


DATA_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
KNOWN_SHA256 = {"val": "0aa3b88843990f3f10a97b9575c94d7b71fb2205240ba04ae4884d9e9c992588"}


def download(url, path, sha256=None):
    """url -> path, atomically: streamed into a temp file beside it that is renamed only once
    complete (Content-Length), hash-checked and fsync'ed, and deleted on any failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                f.write(chunk)
                digest.update(chunk)
            os.fsync(f.fileno())
            expected, n_bytes = resp.headers.get("Content-Length"), f.tell()
        if expected is not None and n_bytes != int(expected):
            raise OSError(f"truncated download: got {n_bytes} of {expected} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise OSError(f"sha256 mismatch: got {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, path)
    except BaseException:
        os.remove(tmp)
        raise


# what each key must hold (an empty context leaves the first ending token nothing to follow)
FIELDS = {"ctx": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
          "endings": (lambda v: isinstance(v, list) and len(v) == 4
                      and all(isinstance(e, str) for e in v), "a list of 4 strings"),
          "label": (lambda v: type(v) is int and 0 <= v < 4, "the number 0, 1, 2 or 3")}


def example_problem(example):
    """What is wrong with one parsed example, as a phrase to follow a colon; None if usable."""
    if not isinstance(example, dict):
        return f"not a JSON object with keys {', '.join(FIELDS)}"
    return next((f'"{key}" must be {wanted}' for key, (ok, wanted) in FIELDS.items()
                 if not ok(example.get(key))), None)


def load_examples(split="val", data_dir=None, limit=None):
    """The first `limit` (None: all) examples of a split as dicts (ctx, endings, label, ...), from
    data_dir (None: $HELLASWAG_DIR, else hellaswag/ beside this file), downloaded there first if
    missing. A bad line is a HellaSwagError naming the file and the line."""
    if split not in ("train", "val"):  # test has no labels
        raise HellaSwagError(f"unknown HellaSwag split {split!r}; use val or train")
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
    """-> (ctx_tokens, [end_tokens x 4]). An ending gets a leading space: GPT-2's BPE attaches a
    space to the word after it. encode_ordinary reads a literal "<|endoftext|>" as text."""
    try:
        import tiktoken
        enc = tiktoken.get_encoding("gpt2")  # tiktoken keeps it after the first call
    except Exception as e:
        raise HellaSwagError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); set "
                             f"TIKTOKEN_CACHE_DIR to a folder with its files") from None
    ends = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    return enc.encode_ordinary(example["ctx"]), ends


def fit_row(ctx_tokens, end_tokens, max_len=None):
    """-> (row, n_ctx): context + ending, and how many of its first tokens are context. A row
    longer than max_len keeps its last max_len tokens: the context is cut from the left (as
    lm-evaluation-harness does), and an ending longer than max_len loses its first tokens too."""
    row, n_ctx = ctx_tokens + end_tokens, len(ctx_tokens)
    if max_len is not None and len(row) > max_len:
        cut = len(row) - max_len
        row, n_ctx = row[cut:], max(n_ctx - cut, 0)
    return row, n_ctx


def count_truncated(examples, max_len):
    """How many examples have a row longer than max_len (None = no limit: 0)."""
    rows = [tokenize_example(example) for example in examples] if max_len is not None else []
    return sum(len(ctx) + max(len(end) for end in ends) > max_len for ctx, ends in rows)

# -----------------------------------------------------------------------------
# the two evaluators


def _logits(out):  # the logits, a tuple starting with them (our GPT), or .logits (transformers)
    return out[0] if isinstance(out, tuple) else getattr(out, "logits", out)


def model_max_len(model):
    """The longest sequence the model's config allows (block_size: our GPT; n_positions or
    max_position_embeddings: transformers), through torch.compile and DDP wrappers, or None."""
    while model is not None and getattr(model, "config", None) is None:
        model = getattr(model, "_orig_mod", getattr(model, "module", None))
    sizes = [getattr(getattr(model, "config", None), key, None)
             for key in ("block_size", "n_positions", "max_position_embeddings")]
    return next((int(size) for size in sizes if size), None)


def _result(n, correct, correct_norm, t0, predictions=None):
    out = {"examples": n, "acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1),
           "num_correct": correct, "num_correct_norm": correct_norm, "seconds": time.time() - t0}
    return out if predictions is None else dict(out, predictions=predictions)


@torch.no_grad()
def evaluate_reference(model, examples, device, *, autocast=None, max_len=None, progress=False,
                       return_predictions=False):
    """One (4, T) forward pass per example: the ground truth evaluate() must match (same API)."""
    from tqdm import tqdm
    t0, max_len = time.time(), model_max_len(model) if max_len is None else max_len
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
            with autocast or contextlib.nullcontext():
                logits = _logits(model(tokens))  # (4, T, V)
            # the loss of token t comes from the logits at t-1, so position 0 is never scored
            losses = F.cross_entropy(logits[:, :-1].float().flatten(0, 1),
                                     tokens[:, 1:].flatten(), reduction="none")  # (4*(T-1),)
            sum_loss = (losses.view(4, -1) * mask[:, 1:]).sum(dim=1)  # (4,)
            avg_loss = sum_loss / mask[:, 1:].sum(dim=1)  # (4,)
            predictions.append((i, int(sum_loss.argmin()), int(avg_loss.argmin())))
    finally:
        model.train(was_training)
    labels = [example["label"] for example in examples]
    correct = [sum(p[k] == y for p, y in zip(predictions, labels)) for k in (1, 2)]  # acc, norm
    return _result(len(examples), *correct, t0, predictions if return_predictions else None)


@torch.no_grad()
def evaluate(model, examples, device, *, autocast=None, rank=0, world_size=1, batch_size=None,
             max_len=None, should_stop=None, progress=False, return_predictions=False,
             bucket_multiple=None, loss_chunk=None):
    """Batched HellaSwag eval: the same predictions as evaluate_reference(), much faster.

    model(idx) (idx: (B, T) int64) returns logits (B, T, V), a tuple starting with them, or an
    object with .logits; its training mode is restored after. autocast: a reusable context such
    as torch.autocast("cuda", dtype=torch.bfloat16). world_size > 1: this rank evaluates
    examples[rank::world_size] and every rank returns the all-reduced counts ("predictions": its
    own). max_len (None: model_max_len): longer rows keep their last max_len tokens. should_stop:
    called on every rank at the same slots (so it may be a collective); True -> None. Else ->
    {examples, acc, acc_norm, num_correct, num_correct_norm, seconds[, predictions: [(index, pred,
    pred_norm), ...]]}. batch_size is in examples (4 rows each)."""
    from tqdm import tqdm
    t0, device = time.time(), torch.device(device)
    gpu, cuda = device.type != "cpu", device.type == "cuda"
    B = 4 * (batch_size or (32 if gpu else 8))  # rows per forward
    # row lengths are rounded up to `multiple`, so a compiled model sees few shapes (val at 32: 6,
    # under dynamo's recompile limit of 8); 8 on CPU, where padding costs more (124M: 16% at 32)
    multiple, chunk = bucket_multiple or (32 if gpu else 8), loss_chunk or (4096 if gpu else 64)
    max_len = model_max_len(model) if max_len is None else max_len

    mine = range(rank, len(examples), world_size)  # this rank's examples
    rows = []  # (tokens, n_ctx); row 4*j + k is ending k of this rank's j-th example
    for i in mine:
        ctx, ends = tokenize_example(examples[i])
        rows += [fit_row(ctx, end, max_len) for end in ends]
    row_lengths = np.array([len(row) for row, _ in rows], dtype=np.int64)
    # scored: the ending's tokens, from position max(n_ctx, 1) (position 0 has nothing before it)
    first = np.maximum([n_ctx for _, n_ctx in rows], 1).astype(np.int64)
    n_scored = row_lengths - first
    # batches of B rows sorted longest first: a batch pads little, and the first is the largest
    # (an out-of-memory shows at once; the allocator's cache is sized by it)
    order, batches = np.argsort(-row_lengths, kind="stable"), []
    for start in range(0, len(order), B):
        T = math.ceil(row_lengths[order[start]] / multiple) * multiple
        batches.append((order[start:start + B], min(T, max_len or T)))
    # Every rank runs as many forwards as the busiest one (rank 0): should_stop is then called
    # equally often everywhere, and under FSDP, where each forward all-gathers the parameters (a
    # collective), no rank hangs waiting for one that ran out of rows. That one runs dummy batches
    # (no rows: all padding, nothing scored) of its last real batch's shape (no new compile).
    n_slots = math.ceil(math.ceil(len(examples) / world_size) * 4 / B)
    T_dummy = batches[-1][1] if batches else min(multiple, max_len or multiple)
    batches += [(np.zeros(0, dtype=np.int64), T_dummy)] * (n_slots - len(batches))

    was_training = model.training
    model.eval()
    row_loss = torch.zeros(len(rows), device=device)  # fp32 sums stay on the device to the end
    try:
        for slot, (row_ids, T) in enumerate(tqdm(batches, desc="hellaswag",
                                                 disable=not progress or rank != 0)):
            if should_stop is not None and slot % STOP_CHECK_EVERY == 0 and should_stop():
                return None
            idx = np.zeros((B, T), dtype=np.int64)  # padding and missing rows: token 0
            scored = [np.arange(0)]  # flat positions in idx of the tokens to score
            for b, r in enumerate(row_ids):
                idx[b, :row_lengths[r]] = rows[r][0]
                scored.append(b * T + np.arange(first[r], row_lengths[r]))
            scored = np.concatenate(scored)
            owners = np.repeat(row_ids, n_scored[row_ids])  # the row of each scored token
            # one host->device copy: idx, then per scored token the position of the logits that
            # predict it, the token, its row. Pinned + non_blocking on CUDA only: the copy overlaps
            # queued GPU work (no host sync); on MPS, non_blocking from unpinned memory has been
            # reported to corrupt data (pytorch/pytorch#139550)
            packed = torch.from_numpy(np.concatenate([idx.ravel(), scored - 1, idx.ravel()[scored],
                                                      owners]))
            packed = (packed.pin_memory() if cuda else packed).to(device, non_blocking=cuda)
            positions, targets, owners = packed[B * T:].view(3, len(scored))  # (N,) each
            with autocast or contextlib.nullcontext():
                logits = _logits(model(packed[:B * T].view(B, T))).flatten(0, 1)  # (B*T, V)
            # fp32 cross-entropy at the scored positions only, `chunk` at a time: that bounds the
            # fp32 copy of the logits (on CPU, buffers over 32 MB are mmaps that page-fault)
            for s in range(0, len(scored), chunk):
                logits_fp32 = logits.index_select(0, positions[s:s + chunk]).float()  # (chunk, V)
                losses = F.cross_entropy(logits_fp32, targets[s:s + chunk], reduction="none")
                row_loss.index_add_(0, owners[s:s + chunk], losses)
            del logits
    finally:
        model.train(was_training)

    sum_loss = row_loss.cpu().view(-1, 4)  # (N, 4): the one host sync
    preds = sum_loss.argmin(dim=1).tolist()
    preds_norm = (sum_loss / torch.from_numpy(n_scored).view(-1, 4)).argmin(dim=1).tolist()
    labels = [examples[i]["label"] for i in mine]
    counts = [len(labels), sum(p == y for p, y in zip(preds, labels)),
              sum(p == y for p, y in zip(preds_norm, labels))]
    if world_size > 1:  # gloo reduces CPU tensors, nccl CUDA ones
        nccl = torch.distributed.get_backend() == "nccl"
        counts = torch.tensor(counts, device=device if nccl else "cpu")
        torch.distributed.all_reduce(counts)
        counts = counts.tolist()
    predictions = list(zip(mine, preds, preds_norm)) if return_predictions else None
    return _result(*counts, t0, predictions)

# -----------------------------------------------------------------------------
# command line: any transformers causal LM that uses GPT-2's tokenizer


MAX_BATCH = 4096  # examples per forward; more fit no card (a 100-token row's logits: 10 MB)
AUTOCAST = {"auto": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one `error:` line and exit 1, not argparse's usage + exit 2
        raise HellaSwagError(f"{message} (see --help)")


def build_parser():
    p = _Parser(description="HellaSwag eval (completion style) of a transformers causal LM with "
                "GPT-2's tokenizer; the last stdout line is JSON.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = p.add_argument
    add("--model", required=True, help="a Hugging Face name (gpt2, gpt2-xl, ...) or a local "
        "transformers folder (for a training checkpoint: python train_gpt2.py --export CKPT)")
    add("--split", default="val", choices=["val", "train"], help="test has no labels")
    add("--limit", type=int, default=None, help="only the first N examples (None: all)")
    add("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    add("--dtype", default="auto", choices=list(AUTOCAST), help="autocast: auto = bf16 on CUDA "
        "with compute capability >= 8, fp16 on older CUDA, fp32 (none) on CPU and MPS")
    add("--batch_size", type=int, default=None, help=f"examples per forward, <= {MAX_BATCH} (None: "
        "32 GPU, 8 CPU)")
    add("--compile", type=int, default=0, choices=[0, 1], help="1: torch.compile the model")
    add("--data_dir", default=None,
        help="folder of the jsonl files (None: $HELLASWAG_DIR, else hellaswag/ beside this file)")
    return p


def resolve_device(name):
    """--device -> a torch.device that this machine has (auto: cuda > mps > cpu)."""
    if name == "auto":
        mps = torch.backends.mps.is_available()
        name = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    try:
        torch.empty(0, device=name)  # raises unless this machine has such a device
    except Exception:
        raise HellaSwagError(f"--device {name}: not available here; use auto, cpu, cuda, cuda:N "
                             f"or mps") from None
    return torch.device(name)


def choose_autocast(dtype, device):
    """--dtype -> (its name after auto, the autocast context or None)."""
    if dtype == "auto":  # bf16 is emulated on CUDA cards older than compute capability 8
        major = torch.cuda.get_device_capability(device)[0] if device.type == "cuda" else 0
        dtype = "fp32" if device.type != "cuda" else "bf16" if major >= 8 else "fp16"
    return dtype, torch.autocast(device.type, dtype=AUTOCAST[dtype]) if AUTOCAST[dtype] else None


def load_model(name, device):
    """A transformers causal LM, fp32 weights, eval mode, from a hub name or a local folder."""
    try:
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except Exception as e:
        raise HellaSwagError(f"--model {name}: cannot load it ({_one_line(e)[:300]}); give a hub "
                             f"name or a transformers folder (python train_gpt2.py --export CKPT "
                             f"writes one)") from None
    model.config.use_cache = False  # no key/value cache: each row is scored in one forward
    return model.to(device).eval()


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
        for flag in ("limit", "batch_size"):
            if getattr(args, flag) is not None and getattr(args, flag) < 1:
                raise HellaSwagError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
        if (args.batch_size or 0) > MAX_BATCH:
            raise HellaSwagError(f"--batch_size must be <= {MAX_BATCH}, got {args.batch_size}")
        device = resolve_device(args.device)
        amp = choose_autocast(args.dtype, device)[1]
        examples = load_examples(args.split, args.data_dir, args.limit)  # before the model loads
        model = load_model(args.model, device)
        result = evaluate(torch.compile(model) if args.compile else model, examples, device,
                          autocast=amp, batch_size=args.batch_size, max_len=model_max_len(model),
                          progress=True)
    except HellaSwagError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: out of memory at --batch_size {args.batch_size or 'default'}; pass a "
              f"smaller --batch_size", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"examples": result["examples"], "acc": result["acc"],
                      "acc_norm": result["acc_norm"], "seconds": round(result["seconds"], 3)}))


if __name__ == "__main__":
    main()
