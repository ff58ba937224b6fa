"""
FineWeb-Edu (or local text) -> GPT-2 token shards: the data step of the GPT-2 124M reproduction.

    python fineweb.py                           # FineWeb-Edu sample-10BT, streamed from the HF hub
    python fineweb.py --dataset classic-10BT    # or edu-100BT, classic-100BT
    python fineweb.py --source input.txt --local_dir quickstart_data --shard_size 30000

--source reads local files and folders (searched recursively) instead: .jsonl / .jsonl.gz (the
"text" of each line), .parquet (the "text" column), .txt (the whole file is one document).

Every document becomes [<|endoftext|>] + encode_ordinary(text) (tiktoken "gpt2"); the documents
are concatenated in order and cut into shards of --shard_size tokens, 1-D uint16 arrays written
with np.save, byte for byte build-nanogpt's format (shard 0 is the validation shard):

    <local_dir>/<prefix>_val_000000.npy, <prefix>_train_000001.npy, ...

Unlike build-nanogpt, an empty document gets no EOT (FineWeb has none), and an input that fits in
the val shard is refused (the trainer needs a train shard). <local_dir>/manifest.json records the
settings and each finished shard: "file", "bytes", "max_token" (its largest token id) and where
it ends in the input. Shards are written atomically and listed only once complete, so after a
crash or Ctrl-C the same command keeps the finished shards and continues, byte-identical to an
uninterrupted run. Bad input or settings: one `error: ...` line on stderr, exit code 1 (a flag
argparse cannot parse: its usage line and exit code 2).
"""

import argparse
import contextlib
import functools
import gzip
import json
import os
import re
import signal
import sys
import threading
import time
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
from tqdm import tqdm

EOT = 50256  # <|endoftext|> in the GPT-2 vocabulary, in front of every document
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fineweb.py/manifest/v1"
SOURCE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
SHARD_RE = re.compile(r".+_(val|train)_\d{6}\.npy")
# Text is sent to the encoder processes in batches of about this many characters (~250k tokens):
# big enough that the per-batch cost vanishes, small enough that memory stays flat.
BATCH_CHARS = 1 << 20

# --dataset: the hub dataset, the default --local_dir and the shard prefix; approx_tokens only
# gives the progress bar its ETA.
DATASETS = {
    "edu-10BT": dict(hub="HuggingFaceFW/fineweb-edu", name="sample-10BT",
                     local_dir="edu_fineweb10B", prefix="edufineweb", approx_tokens=9.9e9),
    "edu-100BT": dict(hub="HuggingFaceFW/fineweb-edu", name="sample-100BT",
                      local_dir="edu_fineweb100B", prefix="edufineweb", approx_tokens=1.0e11),
    "classic-10BT": dict(hub="HuggingFaceFW/fineweb", name="sample-10BT",
                         local_dir="fineweb10B", prefix="fineweb", approx_tokens=1.0e10),
    "classic-100BT": dict(hub="HuggingFaceFW/fineweb", name="sample-100BT",
                          local_dir="fineweb100B", prefix="fineweb", approx_tokens=1.0e11),
}


class UserError(Exception):
    """Bad flags, input or output folder: main() prints it as one `error: ...` line, exit code 1."""


class InputError(UserError):
    """A problem inside one input file; run() adds what to do about it."""


# -----------------------------------------------------------------------------
# tokenizer (runs in the encoder processes)

@functools.cache
def get_encoding():
    """tiktoken's GPT-2 encoding, loaded on first use so that importing fineweb stays cheap."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline without a cache: requests' errors, among others
        raise UserError(f"cannot load the tiktoken 'gpt2' encoding ({type(e).__name__}: {e}); "
                        "connect to the network once or set TIKTOKEN_CACHE_DIR") from None


def encode_text(text):
    """encode_ordinary(text) as a uint32 array (n,). encode_to_numpy with no special tokens runs
    the same BPE (a literal "<|endoftext|>" stays text) but skips the list of Python ints: ~15%
    faster, and compact to send back to the main process."""
    enc = get_encoding()
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:  # a lone surrogate (json.loads makes them): encode_ordinary's repair
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def encode_texts(texts):
    """Documents -> (tokens uint16 (N,), document lengths (D,)), each document EOT + its tokens.
    An empty document gets length 0, not even an EOT, but keeps its place in the numbering."""
    parts, lengths = [], np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text:
            parts += [np.array([EOT], dtype=np.uint32), encode_text(text)]
            lengths[i] = len(parts[-1]) + 1
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
    return tokens.astype(np.uint16), lengths  # GPT-2's 50,257 ids fit


def parse_jsonl_block(block, path, lineno, texts):
    """Append the "text" of each non-blank line of block (its first line is number lineno) to
    texts; at the first bad line stop and return an InputError for it, else return None."""
    for i, line in enumerate(block.split(b"\n")):
        if line.strip():
            try:
                record = json.loads(line)
            except ValueError as e:  # invalid JSON or invalid UTF-8
                return InputError(f"{path} line {lineno + i}: invalid JSON ({e})")
            if not (isinstance(record, dict) and isinstance(record.get("text"), str)):
                return InputError(f"{path} line {lineno + i}: not a JSON object with a \"text\" "
                                  "string")
            texts.append(record["text"])
    return None


def encode_batch(segments):
    """Worker job: segments (see read_files) -> (tokens, document lengths, InputError or None).
    On a bad line the documents before it are still returned: the shards they fill get written."""
    texts, error = [], None
    for seg in segments:
        if seg[0] == "texts":
            texts += seg[1]
        elif error := parse_jsonl_block(seg[1], seg[2], seg[3], texts):
            break
    return *encode_texts(texts), error


# -----------------------------------------------------------------------------
# reading: every input becomes a stream of segments in document order, ("texts", [str, ...]) or
# ("jsonl", raw lines, path, first line number): JSON is parsed in the workers, so the main
# process only reads. Each reader starts at document `skip` (resuming) without tokenizing what it
# skips, and returns how many documents it skipped.


def expand_sources(paths):
    """--source paths -> files (folders searched recursively, in sorted order)."""
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*")
                           if f.is_file() and f.name.endswith(SOURCE_SUFFIXES))
            if not found:
                raise UserError(f"folder {p} holds no {'/'.join(SOURCE_SUFFIXES)} files")
            files += found
        elif not p.is_file():
            raise UserError(f"{p}: no such file or folder (check the --source path)")
        elif not p.name.endswith(SOURCE_SUFFIXES):
            raise UserError(f"{p}: unsupported file type (use {', '.join(SOURCE_SUFFIXES)})")
        else:
            files.append(p)
    return [f.resolve() for f in files]


def read_jsonl(path, skip, block_bytes=BATCH_CHARS):
    """("jsonl", lines, path, first line number) segments of ~block_bytes of whole lines.

    Why --source does not use datasets' json loader (which first converts all of the input to
    Arrow; ~2.5x slower and ~5x the memory on the shared corpus): here only decompression
    happens, raw lines go to the workers, and no more than a few blocks are held at a time.
    """
    skipped, lineno = 0, 1  # lineno: the number of the next line read
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            while lines := f.readlines(block_bytes):
                first, lineno, k = lineno, lineno + len(lines), 0
                while skipped < skip and k < len(lines):  # records are the non-blank lines
                    skipped += bool(lines[k].strip())
                    k += 1
                if k < len(lines):
                    yield ("jsonl", b"".join(lines[k:]), str(path), first + k)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        where = f" after line {lineno - 1:,}" if lineno > 1 else ""
        raise InputError(f"{path}: cannot read it{where} ({type(e).__name__}: {e})") from None
    return skipped


def read_parquet(path, skip):
    """("texts", [...]) segments of the "text" column, the only one read."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    row = 0  # rows read so far
    try:
        pf = pq.ParquetFile(path)
        names = pf.schema_arrow.names
        kind = pf.schema_arrow.field("text").type if "text" in names else pa.null()
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: no \"text\" column of strings (columns: {', '.join(names)})")
        for batch in pf.iter_batches(batch_size=1024, columns=["text"]):
            first, row = row, row + batch.num_rows  # this batch holds rows first..row-1
            if row <= skip:
                continue  # skipped without decoding it
            texts = batch.column(0).to_pylist()[max(skip - first, 0):]
            first = max(first, skip)  # the row of texts[0]
            if None in texts:
                k = texts.index(None)
                yield ("texts", texts[:k])  # the rows before it still count
                raise InputError(f"{path} row {first + k}: \"text\" is null")
            yield ("texts", texts)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: cannot read parquet ({type(e).__name__}: {e})") from None
    return min(skip, row)


def read_txt(path, skip):
    """A .txt file is one document: its whole content, UTF-8, verbatim."""
    if skip:
        return 1
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({e})") from None
    yield ("texts", [text])
    return 0


def read_files(files, skip=0):
    """Segments of all --source files, in order."""
    for path in files:
        read = {".parquet": read_parquet, ".txt": read_txt}.get(path.suffix, read_jsonl)
        skip -= yield from read(path, skip)


def read_hub(hub, name, skip=0):
    """("texts", [...]) segments of the hub dataset, streamed (nothing is downloaded first)."""
    try:
        from datasets import load_dataset
        ds = load_dataset(hub, name=name, split="train", streaming=True)
        for batch in (ds.skip(skip) if skip else ds).iter(batch_size=256):
            yield ("texts", batch["text"])
    except Exception as e:  # network, hub or datasets trouble
        raise UserError(f"cannot stream {hub} ({name}) from the HF hub ({type(e).__name__}: {e}); "
                        "check the network and re-run to resume, or use --source") from None


def tokenize(segments, executor, max_inflight, batch_chars=BATCH_CHARS):
    """(tokens uint16 (N,), document lengths (D,)) per batch of ~batch_chars, in order, while up
    to max_inflight batches are being encoded. On bad input the documents before it are yielded
    first (the shards they fill get written), then the error is raised."""
    pending, batch, size, read_error = deque(), [], 0, None
    try:
        while True:
            try:
                seg = next(segments, None)  # None: end of input
            except UserError as e:
                seg, read_error = None, e
            if seg is not None:
                batch.append(seg)
                size += len(seg[1]) if seg[0] == "jsonl" else sum(map(len, seg[1]))
            if batch and (seg is None or size >= batch_chars):
                pending.append(executor.submit(encode_batch, batch))
                batch, size = [], 0
            while pending and (seg is None or len(pending) >= max_inflight):
                tokens, lengths, error = pending.popleft().result()
                yield tokens, lengths
                if error:
                    raise error
            if seg is None:
                break
        if read_error:
            raise read_error
    finally:
        for future in pending:
            future.cancel()


# -----------------------------------------------------------------------------
# writing: atomic shard files, the manifest


def write_atomic(path, write):
    """write(file) into path.tmp, fsync, rename over path, fsync the folder: whatever moment a
    crash hits, path is absent (or as it was) or complete; the re-run overwrites path.tmp."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb+") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # makes the rename durable; Windows cannot open folders
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_manifest(out_dir, manifest):
    text = (json.dumps(manifest, indent=1) + "\n").encode()
    write_atomic(out_dir / MANIFEST_NAME, lambda f: f.write(text))


def shard_name(prefix, index):
    return f"{prefix}_{'val' if index == 0 else 'train'}_{index:06d}.npy"


def settings_change(old, new):
    """The first setting, or input file by position, that differs, in one line; None if none."""
    def items(settings):
        inp = settings["input"]
        if inp["type"] == "hub":
            inputs = [f"{inp['path']} {inp['name']} from the hub"]
        else:
            inputs = [f"{f['path']} ({f['bytes']:,} bytes)" for f in inp["files"]]
        rest = {k: v for k, v in settings.items() if k != "input"}
        return {**{f"input {i}": v for i, v in enumerate(inputs, 1)}, **rest}

    old, new = items(old), items(new)
    name = next((k for k in [*old, *new] if old.get(k) != new.get(k)), None)
    return name and f"{name}: {old.get(name)} then, {new.get(name)} now"


def open_output(out_dir, settings):
    """The manifest to continue from (a fresh one when nothing is finished). Refuses rather than
    touch finished work: shards without a manifest, other settings, changed or unknown shards."""
    path = out_dir / MANIFEST_NAME
    shard_files = sorted(p.name for p in out_dir.glob("*.npy") if SHARD_RE.fullmatch(p.name))
    fresh = dict(format=MANIFEST_FORMAT, settings=settings, shards=[], complete=False)
    if not path.exists():
        if shard_files:
            raise UserError(f"{out_dir} holds shards ({shard_files[0]}, ...) but no "
                            f"{MANIFEST_NAME}, so they cannot be resumed safely; use another "
                            "--local_dir or delete them")
        return fresh
    try:
        manifest = json.loads(path.read_text())
        assert manifest["format"] == MANIFEST_FORMAT and isinstance(manifest["shards"], list)
        change = settings_change(manifest["settings"], settings)
    except Exception:
        raise UserError(f"{path} is unreadable or not a fineweb.py manifest; "
                        "use another --local_dir or delete it") from None
    if change:
        if not manifest["shards"] and not shard_files:
            return fresh  # nothing was finished there: start over with the new settings
        raise UserError(f"{out_dir} holds shards made with different settings ({change}); "
                        f"use another --local_dir or delete {out_dir}")
    for shard in manifest["shards"]:
        p = out_dir / shard["file"]
        if not p.is_file() or p.stat().st_size != shard["bytes"]:
            raise UserError(f"finished shard {p} is missing or changed; "
                            f"restore it, or delete {out_dir} to start over")
    # a shard file the manifest does not list is fine only if it is the next one: the last run died
    # between renaming it and recording it, so it is unfinished and gets rewritten
    listed = {s["file"] for s in manifest["shards"]}
    next_name = shard_name(settings["prefix"], len(manifest["shards"]))
    strays = [f for f in shard_files if f not in listed and f != next_name]
    if strays:
        raise UserError(f"{out_dir} holds shard files its manifest does not list ({strays[0]}, "
                        "...); use another --local_dir or delete them")
    return manifest


class ShardWriter:
    """Fills a shard-size buffer from the token stream, writes each full shard and records it.
    Positions in the input are (document index, token offset in it; its EOT is 0). A full shard
    is written once a token follows it (or by the final finish_shard): an input that fits in the
    val shard writes nothing, and run() can refuse it cleanly."""

    def __init__(self, out_dir, manifest):
        self.out_dir, self.manifest, self.on_shard = out_dir, manifest, lambda shard: None
        settings, last = manifest["settings"], (manifest["shards"] or [None])[-1]
        self.shard_size = settings["shard_size"]
        self.limit = settings["max_tokens"] or float("inf")
        self.tokens_done = last["token_start"] + last["tokens"] if last else 0  # finished shards
        self.start = (last["end_doc"], last["end_offset"]) if last else (0, 0)  # of the next shard
        self.pos = self.start  # position of the next token added
        self.buf, self.fill = np.empty(min(self.shard_size, self.limit), dtype=np.uint16), 0

    @property
    def total(self):
        return self.tokens_done + self.fill

    def add(self, tokens, lengths):
        """Append the tokens (N,) of consecutive documents of lengths (D,), the first starting at
        self.pos (already trimmed by its offset)."""
        doc0, off0 = self.pos
        ends = np.cumsum(lengths)  # (D,) where each document ends in tokens
        if len(tokens) == 0:  # only empty documents: they still move the position on
            self.pos = (doc0 + len(lengths), 0)
        i = 0
        while i < len(tokens) and self.total < self.limit:
            if self.fill == self.shard_size:
                self.finish_shard()  # a token follows the full shard: now it can be written
            n = min(self.shard_size - self.fill, len(tokens) - i, self.limit - self.total)
            self.buf[self.fill:self.fill + n] = tokens[i:i + n]
            self.fill, i = self.fill + n, i + n
            j = int(np.searchsorted(ends, i, side="right"))  # documents that end at or before i
            if j == len(ends):
                self.pos = (doc0 + j, 0)
            else:  # token i lies inside document j of the batch (the first began at off0)
                self.pos = (doc0 + j, i - int(ends[j - 1]) if j else off0 + i)

    def finish_shard(self):
        """Write the buffered tokens as the next shard and record it in the manifest."""
        if self.fill == 0:
            return
        index, tokens = len(self.manifest["shards"]), self.buf[:self.fill]
        if index == 0:  # claim the folder for these settings before any shard file appears
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_manifest(self.out_dir, self.manifest)
        path = self.out_dir / shard_name(self.manifest["settings"]["prefix"], index)
        write_atomic(path, lambda f: np.save(f, tokens))  # the bytes np.save(filename) writes
        shard = dict(index=index, split="val" if index == 0 else "train", file=path.name,
                     tokens=self.fill, bytes=path.stat().st_size,
                     max_token=int(tokens.max()), token_start=self.tokens_done,
                     start_doc=self.start[0], start_offset=self.start[1],
                     end_doc=self.pos[0], end_offset=self.pos[1])
        self.manifest["shards"].append(shard)
        write_manifest(self.out_dir, self.manifest)
        self.tokens_done, self.fill, self.start = self.tokens_done + self.fill, 0, self.pos
        self.on_shard(shard)


# -----------------------------------------------------------------------------
# the run


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to report
    parent = os.getppid()

    def exit_with_parent():  # a worker whose parent was killed would wait for work forever
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


def make_executor(workers):
    """The encoder pool. Processes, not threads: with many small documents the GIL hand-offs
    made two tiktoken threads burn 1.8x the CPU of two processes, for 1.8x the time
    (benchmarks/bench_fineweb.py)."""
    get_encoding()  # loaded once, here: forked workers inherit it
    return ProcessPoolExecutor(workers, initializer=_worker_init)


def positive_int(s, high=None):
    """argparse type that also takes 1e8 and 100_000_000 (and, given high, at most that)."""
    try:
        v = float(s.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not v.is_integer() or v < 1 or v > (high or v):
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {high:,}: {s!r}"
                                         if high else f"must be a positive whole number: {s!r}")
    return int(v)


def path_arg(s):
    """argparse type: a path, not the empty string (which would mean the current folder)."""
    if not s:
        raise argparse.ArgumentTypeError("an empty path")
    return s


def parse_args(argv=None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description="Tokenize FineWeb(-Edu) or local files with GPT-2 BPE "
                                "into uint16 .npy shards.")
    p.add_argument("--dataset", choices=list(DATASETS), default="edu-10BT",
                   help="hub dataset; also picks the shard prefix and the --local_dir if not given "
                        "(default: %(default)s)")
    p.add_argument("--source", nargs="+", metavar="PATH", type=path_arg,
                   help="local .jsonl/.jsonl.gz/.parquet/.txt files or folders (searched "
                        "recursively) to read instead of the hub; a .txt file is one document")
    p.add_argument("--local_dir", type=path_arg, help="output folder; without it, the "
                   "--dataset's folder beside this script (e.g. edu_fineweb10B)")
    p.add_argument("--shard_size", type=functools.partial(positive_int, high=int(4e9)),
                   default=int(1e8), help="tokens per shard (1e8 and 100_000_000 work too), at "
                   "most 4e9 (held in memory, 2 bytes each); shard 0 is the val shard (default: "
                   "%(default)s)")
    p.add_argument("--max_tokens", type=positive_int,
                   help="stop after this many tokens (more than --shard_size); without it, "
                        "all of the input")
    p.add_argument("--workers", type=functools.partial(positive_int, high=4 * cores),
                   default=cores, help="encoder processes that parse and tokenize, at most 4 per "
                   "core: all cores of this machine (default: %(default)s)")
    return p.parse_args(argv)


def make_settings(args, ds):
    """What the shards depend on; a re-run must match it to continue (see open_output)."""
    if args.source:
        files = [dict(path=str(f), bytes=f.stat().st_size) for f in expand_sources(args.source)]
        inp = dict(type="files", files=files)
    else:
        inp = dict(type="hub", path=ds["hub"], name=ds["name"], split="train")
    return dict(input=inp, tokenizer="gpt2", eot=EOT, dtype="uint16", shard_size=args.shard_size,
                max_tokens=args.max_tokens, prefix=ds["prefix"])


# the trainer needs a train shard: refuse inputs that would only fill the val shard, and suggest
# a --shard_size that gives a val shard and up to nine train shards
NO_TRAIN_SHARD = "everything would go to the val shard and no train shard would be written"


def suggest_shard_size(total_tokens):
    return max(1, -(-total_tokens // 10))


def check_split(args):
    """Before reading anything: --max_tokens must leave room for a train shard."""
    if args.max_tokens is not None and args.max_tokens <= args.shard_size:
        raise UserError(f"--max_tokens {args.max_tokens:,} is not more than --shard_size "
                        f"{args.shard_size:,}: {NO_TRAIN_SHARD}; pass --shard_size "
                        f"{suggest_shard_size(args.max_tokens)} or smaller, or a larger "
                        "--max_tokens")


def check_enough_tokens(args, ds, writer):
    """At the end of the input, before the last shard is written (nothing is, yet, if all of it
    fits in the val shard): there must be documents, and a train shard."""
    total, size = writer.total, writer.shard_size
    source = " ".join(args.source) if args.source else f"{ds['hub']} {ds['name']}"
    if total == 0:
        raise UserError(f"no documents found in {source} (empty documents are skipped)")
    if not writer.manifest["shards"] and total <= size:
        what = "exactly" if total == size else "less than"
        raise UserError(f"{source} holds only {total:,} tokens, {what} one --shard_size "
                        f"({size:,}): {NO_TRAIN_SHARD}; pass --shard_size "
                        f"{suggest_shard_size(total)} or smaller")


def write_shards(args, ds, out_dir, manifest):
    """Tokenize the input, from where the finished shards end, into shards -> (writer, number of
    empty documents skipped)."""
    writer = ShardWriter(out_dir, manifest)
    skip_docs, skip_tokens = writer.pos  # where the finished shards end
    inp, total = manifest["settings"]["input"], args.max_tokens  # total: for the ETA
    if inp["type"] == "files":
        segments = read_files([Path(f["path"]) for f in inp["files"]], skip_docs)
    else:
        segments = read_hub(ds["hub"], ds["name"], skip_docs)
        total = int(min(total or ds["approx_tokens"], ds["approx_tokens"]))

    empty_docs = 0
    with make_executor(args.workers) as executor:
        executor.submit(int).result()  # start (fork) the workers before tqdm starts a thread
        # disable=None: a bar only on a terminal; in logs, the "wrote" lines show the progress
        bar = tqdm(total=total, initial=writer.tokens_done, unit="tok", unit_scale=True,
                   disable=None, dynamic_ncols=True, smoothing=0.05, desc=out_dir.name)

        def on_shard(s):
            bar.write(f"wrote {s['file']}: {s['tokens']:,} tokens (documents {s['start_doc']:,}.."
                      f"{s['end_doc'] - (s['end_offset'] == 0):,})", file=sys.stdout)
            sys.stdout.flush()

        writer.on_shard = on_shard
        batches = tokenize(segments, executor, max_inflight=2 * args.workers + 1)
        try:
            while writer.total < writer.limit and (batch := next(batches, None)) is not None:
                tokens, lengths = batch
                if skip_tokens and len(lengths):  # a shard boundary cut this document
                    if lengths[0] <= skip_tokens:
                        break  # it got shorter: the input changed (reported below)
                    tokens, lengths = tokens[skip_tokens:], lengths.copy()
                    lengths[0] -= skip_tokens
                    skip_tokens = 0
                doc0 = writer.pos[0]
                writer.add(tokens, lengths)
                # the empty documents the writer passed: --max_tokens can stop it inside a batch
                empty_docs += int(np.count_nonzero(lengths[:writer.pos[0] - doc0] == 0))
                bar.update(writer.total - bar.n)
            if skip_tokens and writer.total < writer.limit:
                raise UserError(f"document {skip_docs:,} is shorter than the manifest says or "
                                "missing: the input changed since the finished shards were made; "
                                f"delete {out_dir} to start over")
            check_enough_tokens(args, ds, writer)
            writer.finish_shard()  # the last shard holds the rest
        finally:
            batches.close()  # cancels the batches not started yet
            bar.close()
    return writer, empty_docs


def run(args):
    t0 = time.time()
    ds = DATASETS[args.dataset]
    out_dir = Path(args.local_dir or Path(__file__).resolve().parent / ds["local_dir"])
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--local_dir {out_dir} is a file, not a folder")
    manifest = open_output(out_dir, make_settings(args, ds))
    shards = manifest["shards"]  # the finished ones; write_shards appends the new ones
    if manifest["complete"]:
        t = manifest["totals"]
        print(f"nothing to do: {out_dir} already holds the finished output (1 val + "
              f"{t['shards'] - 1} train shards, {t['tokens']:,} tokens, {t['docs']:,} documents)")
        return
    check_split(args)
    get_encoding()  # fail before reading anything if the tokenizer is unavailable
    tokens_before = sum(s["tokens"] for s in shards)
    if shards:
        last = shards[-1]
        print(f"resuming {out_dir}: {len(shards)} shards ({tokens_before:,} tokens) finished; "
              f"continuing at document {last['end_doc']:,}, token {last['end_offset']:,}")
    try:
        writer, empty_docs = write_shards(args, ds, out_dir, manifest)
    except InputError as e:  # once shards are finished, their settings record the file's size
        if not shards:
            raise UserError(f"{e}; fix or replace that file and re-run") from None
        raise UserError(f"{e}; fix or replace that file, then delete {out_dir} or use another "
                        f"--local_dir (its {len(shards)} finished shards were made with the file "
                        "as it is now)") from None

    docs = writer.pos[0] + (writer.pos[1] > 0)  # documents read, empty ones included
    manifest.update(complete=True, totals=dict(docs=docs, tokens=writer.tokens_done,
                                                shards=len(shards)))
    write_manifest(out_dir, manifest)
    seconds, new_tokens = time.time() - t0, writer.tokens_done - tokens_before
    print(f"done: {docs:,} documents, {writer.tokens_done:,} tokens in {len(shards)} shards "
          f"(1 val + {len(shards) - 1} train) in {out_dir}; this run: {new_tokens:,} tokens in "
          f"{seconds:.1f}s, {new_tokens / max(seconds, 1e-9) / 1e6:.2f}M tokens/s"
          + (f", {empty_docs:,} empty documents skipped" if empty_docs else ""))


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenProcessPool:
        print("error: an encoder process died (out of memory? try fewer --workers); finished "
              "shards are kept, re-run to resume", file=sys.stderr)
        return 1
    except MemoryError:
        print("error: out of memory; pass a smaller --shard_size or fewer --workers (finished "
              "shards are kept)", file=sys.stderr)
        return 1
    except OSError as e:  # the output side: disk full, no permission, ...
        print(f"error: {e}; fix that and re-run (finished shards are kept)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
