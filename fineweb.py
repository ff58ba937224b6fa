"""
FineWeb(-Edu) -> GPT-2 token shards, the data prep step of the GPT-2 124M reproduction.

    python fineweb.py                      # FineWeb-Edu sample-10BT from the HF hub -> edu_fineweb10B/
    python fineweb.py --source corpus/     # local .jsonl / .jsonl.gz / .parquet / .txt files instead

Every document becomes [<|endoftext|>=50256] + enc.encode_ordinary(text) (tiktoken "gpt2"). The
documents are concatenated in dataset order and cut into shards of exactly --shard_size tokens (the
last shard holds the rest). Shard 0 is the validation shard, the others are training shards:

    <local_dir>/<prefix>_val_000000.npy, <prefix>_train_000001.npy, ...

each written with np.save of a 1-D uint16 array: byte for byte what build-nanogpt's fineweb.py
produces, so shards are interchangeable between the two repos (the trainer memory-maps them).
One difference: an empty document (text == "") is skipped, where build-nanogpt writes a lone EOT
for it; it still counts in the document numbering below. Real FineWeb has no empty documents, so
its shards are the same. An input that all fits in the val shard (at most --shard_size tokens, or
--max_tokens <= --shard_size) is refused with a --shard_size that works: the trainer needs a train
shard too.

Inputs (--source PATH [PATH ...]; folders are searched recursively, files taken in sorted order):
  .jsonl / .jsonl.gz  one JSON object per non-blank line, its "text" (a string) is the document;
                      other keys are ignored, so files with different extra columns mix fine.
  .parquet            one document per row of the "text" column (only that column is read).
  .txt                the WHOLE file (UTF-8, taken verbatim) is ONE document.
Without --source the same pipeline reads the HF hub dataset in streaming mode.

Resuming: <local_dir>/manifest.json records the settings and every finished shard:
    {"format": "fineweb.py/manifest/v1",
     "settings": {"input": {...}, "tokenizer": "gpt2", "eot": 50256, "dtype": "uint16",
                  "shard_size": int, "max_tokens": int | null, "prefix": str},
     "shards": [{"index", "split", "file", "tokens", "bytes", "sha256",
                 "max_token",                 # largest token id in it (absent in older manifests)
                 "token_start",               # global offset of the shard's first token
                 "start_doc", "start_offset", # first token = token start_offset of document start_doc
                 "end_doc", "end_offset"}],   # position just past the last token (exclusive)
     "complete": bool, "totals": {...} (once complete)}
Documents are numbered by their record in the input (jsonl line that is not blank, parquet row,
.txt file, hub record), empty ones included, so resuming skips exactly that many records. A
document's tokens are numbered from 0 (its EOT), so (end_doc, end_offset) = (d, 0) means the shard
ends exactly after document d-1 (and any empty ones right after it), and (d, k>0) means a shard
boundary cut document d after k tokens.
A shard is written to "<file>.tmp", fsynced, renamed, and only then added to the manifest (also
written atomically), so a half-written shard never looks finished. Re-running the same command
skips the documents already consumed (without tokenizing them), re-tokenizes the one document a
shard boundary cut and drops its first end_offset tokens, and continues. Re-running on a finished
output does nothing. The settings record every input file's size, so a changed input file (say a
corrupt one replaced) makes finished shards unusable: on a bad input file the error says whether
fixing it and re-running works (no shard finished: the run leaves no manifest behind) or the
finished shards must go (delete the folder or use another --local_dir).

Speed: the main process only reads (decompresses) the input and writes shards; --workers processes
(default: all cores) parse JSON and tokenize batches of ~1 MB of text, a bounded number of batches in
flight (memory stays flat), results consumed in order. A tqdm bar (on a terminal) shows tokens/s and
an ETA (total: the dataset's approximate size, --max_tokens, or for --source an estimate from the
bytes read so far); a summary line ends the run. See make_executor for threads vs processes.

Testing hook: the environment variable FINEWEB_CRASH_AT="<stage>:<shard index>" makes the process
SIGKILL itself at <stage> of writing that shard, where <stage> is "tmp_written" (temp file written,
not yet renamed), "renamed" (shard file in place, manifest not yet updated) or "recorded" (manifest
updated). It simulates a crash at the worst possible moments; it is inert when unset.
"""

import argparse
import gzip
import hashlib
import json
import os
import re
import signal
import sys
import time
import threading
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

EOT = 50256  # <|endoftext|> in the GPT-2 vocabulary, delimits documents
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "fineweb.py/manifest/v1"
SOURCE_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
SHARD_RE = re.compile(r"^(?P<prefix>.+)_(?P<split>val|train)_(?P<index>\d{6})\.npy$")

# --dataset choices: where the hub data lives and where/how its shards are written by default.
# approx_tokens (GPT-2 tokens, EOTs included) only feeds the progress bar's ETA.
DATASETS = {
    "edu-10BT": dict(hub="HuggingFaceFW/fineweb-edu", name="sample-10BT", local_dir="edu_fineweb10B",
                     prefix="edufineweb", approx_tokens=9.9e9),
    "edu-100BT": dict(hub="HuggingFaceFW/fineweb-edu", name="sample-100BT", local_dir="edu_fineweb100B",
                      prefix="edufineweb", approx_tokens=1.0e11),
    "classic-10BT": dict(hub="HuggingFaceFW/fineweb", name="sample-10BT", local_dir="fineweb10B",
                         prefix="fineweb", approx_tokens=1.0e10),
    "classic-100BT": dict(hub="HuggingFaceFW/fineweb", name="sample-100BT", local_dir="fineweb100B",
                          prefix="fineweb", approx_tokens=1.0e11),
}

# Documents are handed to the encoder processes in batches of about this many characters (~250k
# tokens): big enough that per-batch overhead vanishes, small enough that memory stays flat.
BATCH_CHARS = 1 << 20


class UserError(Exception):
    """Bad input, a bad output dir or flags that cannot work: main() prints it as one `error: ...`
    line and exits 1.

    A problem inside an input file also carries input_file (its path), fix (what to do to the file,
    e.g. "replace it") and read_part (which part of it finished shards may hold). Fixing the file
    changes its size, so it no longer matches the settings the finished shards were made with:
    run() ends the message with what will work given what is finished (see with_next_step).
    """

    def __init__(self, message, input_file=None, fix=None, read_part=None):
        super().__init__(message)
        self.input_file, self.fix, self.read_part = input_file, fix, read_part


def corrupt_file_error(path, problem):
    """The file cannot be read (past some point): only replacing it helps."""
    return UserError(f"{path}: {problem}", input_file=str(path), fix="replace it",
                     read_part="the readable part of the corrupt file")


def bad_record_error(path, number, problem, unit="line"):
    """Record `number` (a jsonl line, a parquet row) of path is not a document: fix or drop it."""
    return UserError(f"{path} {unit} {number}: {problem}", input_file=str(path), fix=f"fix or remove that {unit}",
                     read_part=f"the {unit}s before it")


# -----------------------------------------------------------------------------
# tokenizer

_ENCODING = None


def get_encoding():
    """The tiktoken GPT-2 encoding, loaded on first use (never at import)."""
    global _ENCODING
    if _ENCODING is None:
        try:
            import tiktoken
            _ENCODING = tiktoken.get_encoding("gpt2")
        except Exception as e:  # offline without a cache raises requests' errors, etc.
            raise UserError(f"cannot load the tiktoken 'gpt2' encoding ({type(e).__name__}: {e}); "
                            "connect to the network once or point TIKTOKEN_CACHE_DIR at a cache") from None
        assert _ENCODING.eot_token == EOT
    return _ENCODING


def encode_text(text):
    """enc.encode_ordinary(text) as a uint32 array. (n,)

    encode_to_numpy with no special tokens allowed or disallowed runs the very same BPE as
    encode_ordinary (a literal "<|endoftext|>" in the text stays plain text) but hands back the
    Rust buffer instead of building a Python list of ints: ~15% faster, and a compact array to send
    back to the main process.
    """
    enc = get_encoding()
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:
        # lone surrogates (possible after json.loads): same repair as tiktoken's encode_ordinary
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def check_uint16(tokens):
    """Raise unless every token id fits in uint16; the shards store ids as uint16."""
    if tokens.size == 0:
        return
    hi, lo = int(tokens.max()), int(tokens.min())
    if hi >= 2**16 or lo < 0:
        raise UserError(f"token id {hi if hi >= 2**16 else lo} does not fit in uint16 (vocab must be < 65536)")


def encode_texts(texts):
    """Tokenize a list of documents -> (tokens uint16 (N,), doc lengths int64 (D,)), each doc = EOT + text.

    An empty document (text == "") gets length 0: no tokens, not even an EOT (see module doc), but
    it keeps its place in the document numbering, so resuming skips the same records as before.
    """
    eot = np.array([EOT], dtype=np.uint32)
    parts = []
    lengths = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if not text:
            lengths[i] = 0
            continue
        ids = encode_text(text)
        parts.append(eot)
        parts.append(ids)
        lengths[i] = len(ids) + 1
    flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
    check_uint16(flat)
    return flat.astype(np.uint16), lengths


def encode_batch(segments):
    """Worker job: a batch of segments -> (tokens uint16 (N,), doc lengths (D,), file marks, error or None).

    A segment is ("texts", [str, ...]), ("jsonl", raw_lines_bytes, path, first_line_number) or
    ("file", path) where an input file starts after the resume point. JSON lines are parsed here, in
    the worker, so the main process only reads/decompresses bytes; which is also why only the worker
    can tell at which document a file starts: marks = [(path, documents of this batch before it)].
    On a bad record the documents before it are still returned, with the error, so they can be
    written first.
    """
    texts, marks, error = [], [], None
    for seg in segments:
        if seg[0] == "file":
            marks.append((seg[1], len(texts)))
        elif seg[0] == "texts":
            texts.extend(seg[1])
        else:
            error = parse_jsonl_block(seg[1], seg[2], seg[3], texts)
            if error is not None:
                break
    tokens, lengths = encode_texts(texts)
    return tokens, lengths, marks, error


# -----------------------------------------------------------------------------
# documents: every input becomes one stream of segments (see encode_batch) in dataset order


def expand_sources(paths):
    """--source paths -> sorted list of files (folders searched recursively). Raises on missing/unsupported."""
    files = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and f.name.endswith(SOURCE_SUFFIXES))
            if not found:
                raise UserError(f"folder {p} holds no {'/'.join(SOURCE_SUFFIXES)} files")
            files.extend(found)
        elif path.is_file():
            if not path.name.endswith(SOURCE_SUFFIXES):
                raise UserError(f"{p}: unsupported file type (use {', '.join(SOURCE_SUFFIXES)})")
            files.append(path)
        else:
            raise UserError(f"{p}: no such file or folder (check the --source path)")
    return [f.resolve() for f in files]


def record_problem(record):
    """Why a record is not a document (None when its "text" is a string)."""
    if not isinstance(record, dict):
        return "record is not a JSON object (each line must be like {\"text\": \"...\"})"
    text = record.get("text")
    if not isinstance(text, str):
        if "text" not in record:
            return "record has no \"text\" field"
        return f"record \"text\" is {type(text).__name__}, not a string"
    return None


def parse_jsonl_block(block, path, lineno, texts):
    """Append the "text" of every non-blank line of `block` (whose first line is number `lineno`)
    to texts; return a UserError for the first bad line (and stop there), else None."""
    for i, line in enumerate(block.split(b"\n")):
        if not line or line.isspace():
            continue  # blank lines are not records
        try:
            record = json.loads(line)
        except ValueError as e:  # JSONDecodeError and bad UTF-8 (UnicodeDecodeError)
            return bad_record_error(path, lineno + i, f"invalid JSON ({e})")
        problem = record_problem(record)
        if problem:
            return bad_record_error(path, lineno + i, problem)
        texts.append(record["text"])
    return None


def _skip_records(block, n):
    """Skip up to n non-blank lines of block -> (byte offset after them, records skipped, lines skipped)."""
    pos = skipped = lines = 0
    while skipped < n and pos < len(block):
        end = block.find(b"\n", pos)
        end = len(block) if end < 0 else end + 1
        skipped += bool(block[pos:end].strip())
        lines += 1
        pos = end
    return pos, skipped, lines


class ReadProgress:
    """How many bytes of the --source files the readers got through (compressed bytes for .gz);
    tokens written / this fraction estimates the total token count for the progress bar's ETA."""

    def __init__(self, total_bytes):
        self.total_bytes, self.files_done, self.in_file = total_bytes, 0, 0

    def estimate_total(self, tokens):
        read = self.files_done + self.in_file
        return int(tokens * self.total_bytes / read) if read else None


def read_jsonl(path, skip, block_bytes=BATCH_CHARS, progress=None):
    """Yield ("jsonl", block, path, first_line) segments of whole lines (~block_bytes each) of a
    .jsonl(.gz); the first `skip` records are passed over without parsing them. Returns how many
    records it skipped (fewer than `skip` when the file is shorter)."""
    skipped, lineno, pieces = 0, 1, []  # lineno: number of the first line not yet handed out
    try:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            while True:
                chunk = f.read(block_bytes)
                if chunk:
                    cut = chunk.rfind(b"\n") + 1
                    if cut == 0:  # no line end yet (a very long line): keep collecting
                        pieces.append(chunk)
                        continue
                    block = b"".join((*pieces, memoryview(chunk)[:cut]))  # one copy
                    pieces = [chunk[cut:]] if cut < len(chunk) else []
                else:  # end of file: whatever is left is the last line (without "\n")
                    block, pieces = b"".join(pieces), []
                first = lineno
                lineno += block.count(b"\n")
                if skipped < skip:
                    pos, n, lines = _skip_records(block, skip - skipped)
                    block, skipped, first = block[pos:], skipped + n, first + lines
                if progress is not None:
                    progress.in_file = getattr(f, "fileobj", f).tell()  # GzipFile.fileobj: the compressed file
                if block:
                    yield ("jsonl", block, str(path), first)
                if not chunk:
                    break
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        where = f" after line {lineno - 1:,}" if lineno > 1 else ""
        raise corrupt_file_error(path, f"cannot read it{where} ({type(e).__name__}: {e})") from None
    return skipped


def read_parquet(path, skip):
    """Yield ("texts", [...]) segments of the "text" column of a .parquet (only that column is read);
    whole row groups are skipped from the metadata alone. Returns how many rows it skipped."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        pf = pq.ParquetFile(path)
        if "text" not in pf.schema_arrow.names:
            raise UserError(f"{path}: no \"text\" column (columns: {', '.join(pf.schema_arrow.names)})",
                            input_file=str(path), fix="give it a \"text\" column of strings or leave it out")
        text_type = pf.schema_arrow.field("text").type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise UserError(f"{path}: the \"text\" column holds {text_type}, not strings",
                            input_file=str(path), fix="give it a \"text\" column of strings or leave it out")
        skipped, group = 0, 0
        while group < pf.num_row_groups and skipped + pf.metadata.row_group(group).num_rows <= skip:
            skipped += pf.metadata.row_group(group).num_rows
            group += 1
        row = skipped  # index in the file of the next row read
        if group < pf.num_row_groups:
            for batch in pf.iter_batches(batch_size=1024, row_groups=range(group, pf.num_row_groups), columns=["text"]):
                texts = batch.column(0).to_pylist()
                if skipped < skip:
                    n = min(skip - skipped, len(texts))
                    texts, skipped, row = texts[n:], skipped + n, row + n
                if batch.column(0).null_count and None in texts:
                    k = texts.index(None)
                    if k:
                        yield ("texts", texts[:k])  # the rows before it still count
                    raise bad_record_error(path, row + k, "\"text\" is null", unit="row")
                if texts:
                    yield ("texts", texts)
                row += len(texts)
    except (OSError, pa.ArrowException) as e:
        raise corrupt_file_error(path, f"cannot read parquet ({type(e).__name__}: {e})") from None
    return skipped


def read_txt(path, skip):
    """A .txt file is ONE document: its whole content, decoded as UTF-8, verbatim."""
    if skip:
        return 1
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not valid UTF-8 ({e})", input_file=str(path), fix="re-encode it as UTF-8") from None
    except OSError as e:
        raise corrupt_file_error(path, f"cannot read it ({e})") from None
    yield ("texts", [text])
    return 0


def iter_source_segments(files, skip=0, progress=None):
    """Segments of all documents in `files`, in order, starting at document index `skip`; a
    ("file", path) segment marks where each file starts, unless some of its documents are in
    finished shards (skip > 0 there; see encode_batch and with_next_step)."""
    for path in files:
        if skip == 0:
            yield ("file", str(path))
        if path.name.endswith(".parquet"):
            skip -= yield from read_parquet(path, skip)
        elif path.name.endswith(".txt"):
            skip -= yield from read_txt(path, skip)
        else:
            skip -= yield from read_jsonl(path, skip, progress=progress)
        if progress is not None:
            progress.files_done, progress.in_file = progress.files_done + path.stat().st_size, 0


def iter_hub_segments(hub, name, skip=0, docs_per_segment=256):
    """Segments of the hub dataset streamed in order (no full download), from document `skip` on."""
    texts = []
    try:
        from datasets import load_dataset
        ds = load_dataset(hub, name=name, split="train", streaming=True)
        if skip:
            ds = ds.skip(skip)  # still streams the skipped records, but does not tokenize them
        for i, record in enumerate(ds, skip):
            problem = record_problem(record)
            if problem:
                raise UserError(f"{hub}/{name} record {i}: {problem}; use --source with a fixed local copy")
            texts.append(record["text"])
            if len(texts) == docs_per_segment:
                yield ("texts", texts)
                texts = []
    except UserError:
        if texts:
            yield ("texts", texts)  # the documents before the bad one still count
        raise
    except Exception as e:
        raise UserError(f"cannot stream {hub} ({name}) from the HF hub ({type(e).__name__}: {e}); "
                        "check the network and re-run to resume, or use --source") from None
    if texts:
        yield ("texts", texts)


def _segment_size(seg):
    return len(seg[1]) if seg[0] == "jsonl" else 0 if seg[0] == "file" else sum(map(len, seg[1]))


def tokenize_documents(segments, executor, max_inflight, batch_chars=BATCH_CHARS):
    """(tokens uint16 (N,), doc lengths (D,), file marks) per batch of documents, in document order.

    The main process reads segments and groups them into batches of ~batch_chars characters
    (bounded memory) while up to max_inflight batches are being encoded by the executor's workers,
    so reading overlaps encoding. On bad input the documents before it are still tokenized and
    yielded (so every shard they complete gets finished) before the error is raised.
    """
    pending, batch, size, read_error = deque(), [], 0, None
    segments = iter(segments)
    try:
        while True:
            try:
                seg = next(segments, None)  # None: no more input
            except UserError as e:  # bad input while reading: finish what came before it
                read_error, seg = e, None
            if seg is not None:
                batch.append(seg)
                size += _segment_size(seg)
            if batch and (seg is None or size >= batch_chars):
                pending.append(executor.submit(encode_batch, batch))
                batch, size = [], 0
            while pending and (seg is None or len(pending) >= max_inflight):
                tokens, lengths, marks, error = pending.popleft().result()
                yield tokens, lengths, marks
                if error is not None:  # a bad record inside the batch: stop right after the docs before it
                    raise error
            if seg is None:
                break
        if read_error is not None:
            raise read_error
    finally:
        for fut in pending:
            fut.cancel()


# -----------------------------------------------------------------------------
# output: atomic shard files + manifest


def _crash_hook(stage, index):
    """Testing hook (see module doc): SIGKILL ourselves at `stage` of writing shard `index`."""
    if os.environ.get("FINEWEB_CRASH_AT") == f"{stage}:{index}":
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open folders; the rename is still atomic there
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path, write_fn, before_rename=None):
    """write_fn(file) into path.tmp, fsync, rename over path, fsync the folder: a crash leaves path
    absent or complete. before_rename() runs between the fsync and the rename (the crash hook)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb+") as f:
        write_fn(f)
        f.flush()
        os.fsync(f.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_shard(path, tokens, index):
    """np.save(tokens) to path atomically -> (bytes, sha256)."""
    out = {}

    def save(f):
        np.save(f, tokens)  # same bytes as np.save(filename, tokens) in build-nanogpt
        out["bytes"] = f.tell()
        f.seek(0)
        sha = hashlib.sha256(f.read(out["bytes"] - tokens.nbytes))  # the .npy header...
        sha.update(memoryview(np.ascontiguousarray(tokens)))  # ...then the data, exactly as np.save wrote it
        out["sha256"] = sha.hexdigest()

    write_atomic(path, save, before_rename=lambda: _crash_hook("tmp_written", index))
    _crash_hook("renamed", index)
    return out["bytes"], out["sha256"]


def write_manifest(out_dir, manifest):
    write_atomic(out_dir / MANIFEST_NAME, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))


def shard_name(prefix, index):
    return f"{prefix}_{'val' if index == 0 else 'train'}_{index:06d}.npy"


THEN = "when the finished shards were made"
SETTING_NAMES = dict(shard_size="--shard_size", max_tokens="--max_tokens", prefix="shard file prefix (from --dataset)")


def show_path(path):
    """A path as the user would type it: relative when it lies under the current folder."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _show_value(v):
    return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else "not set" if v is None else str(v)


def _show_input(inp):
    if inp.get("type") == "hub":
        return f"{inp.get('path')} {inp.get('name')} from the hub"
    return f"{len(inp.get('files', []))} --source files"


def _and_more(items):
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def describe_input_change(old, new):
    """The input settings differ: say exactly how, in one line (which file is new, gone or resized)."""
    if old.get("type") != "files" or new.get("type") != "files":
        return f"input: {_show_input(old)} {THEN}, now {_show_input(new)}"
    then_files = [(f.get("path"), f.get("bytes")) for f in old.get("files", [])]
    now_files = [(f.get("path"), f.get("bytes")) for f in new.get("files", [])]
    then_sizes, now_sizes = dict(then_files), dict(now_files)
    added = [p for p, _ in now_files if p not in then_sizes]
    if added:
        return f"{show_path(added[0])}{_and_more(added)}: not an input {THEN}, now it is"
    gone = [p for p, _ in then_files if p not in now_sizes]
    if gone:
        return f"{show_path(gone[0])}{_and_more(gone)}: an input {THEN}, now it is not"
    resized = [p for p, _ in now_files if now_sizes[p] != then_sizes[p]]
    if resized:
        p = resized[0]
        then_size, now_size = _show_value(then_sizes[p]), _show_value(now_sizes[p])
        return f"{show_path(p)}: {then_size} bytes {THEN}, now {now_size}" + _and_more(resized)
    then_order, now_order = [p for p, _ in then_files], [p for p, _ in now_files]
    if then_order != now_order:  # the same files in another order, or one given a different number of times
        n_common = min(len(then_order), len(now_order))
        i = next((i for i in range(n_common) if then_order[i] != now_order[i]), n_common)
        at = lambda order: show_path(order[i]) if i < len(order) else "none"  # noqa: E731
        counts = f" ({len(then_order)} input files then, {len(now_order)} now)" if i == n_common else ""
        return f"input file number {i + 1}: {at(then_order)} {THEN}, now {at(now_order)}{counts}"
    return f"input: {json.dumps(old)} {THEN}, now {json.dumps(new)}"  # a hand-edited manifest


def describe_settings_change(old, new):
    """The first difference between two settings dicts, in one line that names exactly what differs
    (never a cut-off repr: two long JSON strings cut at the same length can look identical)."""
    if old.get("input") != new.get("input"):
        return describe_input_change(old.get("input") or {}, new.get("input") or {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{SETTING_NAMES.get(key, key)}: {_show_value(old.get(key))} {THEN}, now {_show_value(new.get(key))}"
    return "?"


def list_shard_files(out_dir):
    """Names of the shard files (finished or not) in out_dir, sorted; [] when it does not exist."""
    return sorted(p.name for p in out_dir.glob("*.npy") if SHARD_RE.match(p.name)) if out_dir.is_dir() else []


def open_output(out_dir, settings):
    """Check out_dir against settings -> the manifest to continue from (a fresh one if nothing is finished).

    Refuses (UserError) rather than touching anything finished: shards without a manifest,
    a manifest made with other settings, missing/changed finished shards, unknown shard files.
    """
    manifest_path = out_dir / MANIFEST_NAME
    shard_files = list_shard_files(out_dir)
    fresh = dict(format=MANIFEST_FORMAT, settings=settings, shards=[], complete=False)
    if not manifest_path.exists():
        if shard_files:
            raise UserError(f"{out_dir} holds shards ({shard_files[0]}, ...) but no {MANIFEST_NAME}, so they cannot be "
                            "resumed safely; use another --local_dir or delete them")
        return fresh
    try:
        manifest = json.loads(manifest_path.read_text())
        assert manifest["format"] == MANIFEST_FORMAT and isinstance(manifest["shards"], list)
        old_settings = manifest["settings"]
    except Exception:
        raise UserError(f"{manifest_path} is unreadable or not a fineweb.py manifest; "
                        "use another --local_dir or delete it") from None
    if old_settings != settings:
        if not manifest["shards"] and not shard_files:
            return fresh  # nothing was finished there: start over with the new settings
        raise UserError(f"{out_dir} holds shards made with different settings "
                        f"({describe_settings_change(old_settings, settings)}); use another --local_dir or delete {out_dir}")
    listed = set()
    for shard in manifest["shards"]:
        path = out_dir / shard["file"]
        if not path.is_file() or path.stat().st_size != shard["bytes"]:
            raise UserError(f"finished shard {path} is missing or changed; restore it, or delete {out_dir} to start over")
        listed.add(shard["file"])
    # a shard file not in the manifest is fine only if it is the very next one: the previous run
    # died between renaming it and recording it, so it is not finished and will be rewritten.
    next_name = shard_name(settings["prefix"], len(manifest["shards"]))
    strays = [f for f in shard_files if f not in listed and f != next_name]
    if strays:
        raise UserError(f"{out_dir} holds shard files its manifest does not list ({strays[0]}, ...); "
                        "use another --local_dir or delete them")
    return manifest


class ShardWriter:
    """Fills shard-size buffers from the token stream and writes each full shard (+ manifest entry).

    Positions are (document index, token offset inside that document, EOT = offset 0). A full shard
    is written once the next token arrives (or by the final finish_shard), not the moment it fills:
    so when the whole input fits in the val shard nothing is written at all and run() can refuse
    with a better --shard_size without leaving a val-only output behind.
    """

    def __init__(self, out_dir, manifest, on_shard=None):
        self.out_dir, self.manifest, self.on_shard = out_dir, manifest, on_shard
        s = manifest["settings"]
        self.prefix, self.shard_size, self.max_tokens = s["prefix"], s["shard_size"], s["max_tokens"]
        last = manifest["shards"][-1] if manifest["shards"] else None
        self.tokens_done = last["token_start"] + last["tokens"] if last else 0  # tokens in finished shards
        self.start = (last["end_doc"], last["end_offset"]) if last else (0, 0)  # where the next shard starts
        self.pos = self.start  # position of the next token to be added
        size = self.shard_size if self.max_tokens is None else min(self.shard_size, self.max_tokens - self.tokens_done)
        self.buf = np.empty(max(size, 0), dtype=np.uint16)  # (shard_size,) filled in place, never reallocated
        self.fill = 0

    @property
    def total(self):
        """Tokens accepted so far (finished shards + current buffer)."""
        return self.tokens_done + self.fill

    @property
    def full(self):
        return self.max_tokens is not None and self.total >= self.max_tokens

    def add(self, tokens, lengths):
        """Append one batch: tokens (N,) uint16 of consecutive documents with lengths (D,), the first of
        which starts at self.pos (i.e. it was already trimmed by self.pos's offset)."""
        doc0, off0 = self.pos
        ends = np.cumsum(lengths)  # (D,) end of each document inside `tokens`
        if len(tokens) == 0:  # only empty documents: they still move the position on
            self.pos = (doc0 + len(lengths), 0)
        i = 0
        while i < len(tokens) and not self.full:
            if self.fill == self.shard_size:
                self.finish_shard()  # a token follows it: now the full shard can be written
            limit = self.shard_size - self.fill
            if self.max_tokens is not None:
                limit = min(limit, self.max_tokens - self.total)
            n = min(limit, len(tokens) - i)
            self.buf[self.fill:self.fill + n] = tokens[i:i + n]
            self.fill += n
            i += n
            self.pos = self._position(doc0, off0, ends, i)

    @staticmethod
    def _position(doc0, off0, ends, i):
        """Position of token i of a batch whose first token is (doc0, off0) and doc ends are `ends`."""
        j = int(np.searchsorted(ends, i, side="right"))  # documents fully before token i (empty ones right at i too)
        if j == len(ends):
            return (doc0 + j, 0)
        start_j = int(ends[j - 1]) if j else 0
        return (doc0 + j, i - start_j + (off0 if j == 0 else 0))

    def finish_shard(self):
        """Write the buffered tokens as the next shard and record it in the manifest."""
        if self.fill == 0:
            return
        index = len(self.manifest["shards"])
        if index == 0:
            # claim the folder for these settings before the first shard file appears, so that a crash
            # right after renaming it leaves a shard its manifest explains (see open_output)
            write_manifest(self.out_dir, self.manifest)
        name = shard_name(self.prefix, index)
        tokens = self.buf[:self.fill]
        nbytes, sha = write_shard(self.out_dir / name, tokens, index)
        # max_token lets the trainer check the token ids against its vocab without reading the shards
        shard = dict(index=index, split="val" if index == 0 else "train", file=name, tokens=self.fill,
                     bytes=nbytes, sha256=sha, max_token=int(tokens.max()), token_start=self.tokens_done,
                     start_doc=self.start[0], start_offset=self.start[1], end_doc=self.pos[0], end_offset=self.pos[1])
        self.manifest["shards"].append(shard)
        write_manifest(self.out_dir, self.manifest)
        _crash_hook("recorded", index)
        self.tokens_done += self.fill
        self.fill = 0
        self.start = self.pos
        if self.on_shard:
            self.on_shard(shard)


# -----------------------------------------------------------------------------
# the run


def _exit_with_parent(parent_pid):
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)  # our parent died (e.g. SIGKILL): don't linger as an orphan waiting for work


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (clean message, resume)
    # the parent as seen from here (the main process, or the forkserver that dies with it)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def make_executor(workers):
    """The encoder pool: `workers` processes, each running encode_batch on batches of documents.

    Threads vs processes, measured on the 2-core dev VM (benchmarks/bench_fineweb.py, 14.7M-token
    corpus, quiet machine, median of 5): this same pipeline with 2 encoder THREADS took 3.6 s wall
    and 6.6 CPU-s, with 2 encoder PROCESSES 2.06 s wall and 3.7 CPU-s (1 process: 3.3 s). tiktoken
    does release the GIL, but with many small documents the per-document GIL round trips (plus
    contention inside the tokenizer, +35% CPU even for two threads on huge strings) make two
    threads burn ~1.8x the CPU of one, while shipping ~1 MB of raw JSON lines to a worker and
    ~0.5 MB of uint16 tokens back per batch is cheap. So: processes.
    """
    get_encoding()  # loaded once here; forked workers inherit it, spawned ones load it lazily
    return ProcessPoolExecutor(max_workers=workers, initializer=_worker_init)


def default_workers():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def positive_int(s):
    """argparse type accepting 100000000, 1e8, 1_000_000."""
    try:
        v = float(s.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if v != int(v) or v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number: {s!r}")
    return int(v)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows "(default: X)" for every flag that has a value when not given; a flag without one
    (default None) says in its help what happens without it, instead of an unhelpful "(default: None)"."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_args(argv=None):
    p = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                description="Tokenize FineWeb(-Edu) (or local files) with GPT-2 BPE into uint16 .npy shards.")
    p.add_argument("--dataset", choices=list(DATASETS), default="edu-10BT",
                   help="hub dataset; also picks the shard file prefix and the --local_dir when that is not given")
    p.add_argument("--source", nargs="+", metavar="PATH",
                   help="local .jsonl/.jsonl.gz/.parquet/.txt files or folders (searched recursively) to read instead "
                        "of the hub; a .txt file is one document")
    p.add_argument("--local_dir", default=None,
                   help="output folder; without it, the --dataset's folder beside this script (e.g. edu_fineweb10B)")
    p.add_argument("--shard_size", type=positive_int, default=int(1e8),
                   help="tokens per shard (1e8 and 100_000_000 work too); shard 0 is the val shard")
    p.add_argument("--max_tokens", type=positive_int, default=None,
                   help="stop after this many tokens in total (more than --shard_size); without it, all of the input")
    p.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="encoder processes that parse and tokenize: all cores of this machine")
    return p.parse_args(argv)


def make_settings(args):
    ds = DATASETS[args.dataset]
    if args.source:
        files = expand_sources(args.source)
        inp = dict(type="files", files=[dict(path=str(f), bytes=f.stat().st_size) for f in files])
    else:
        inp = dict(type="hub", path=ds["hub"], name=ds["name"], split="train")
    return dict(input=inp, tokenizer="gpt2", eot=EOT, dtype="uint16", shard_size=args.shard_size,
                max_tokens=args.max_tokens, prefix=ds["prefix"])


class _NoBar:
    """Stand-in for the tqdm bar when stderr is not a terminal (logs, pipes, tests): no bar, and
    tqdm is not even imported; the per-shard lines and the summary still go to stdout."""
    total = None

    def update(self, n):
        pass

    def write(self, s, file=None):
        print(s, file=file or sys.stdout, flush=True)

    def close(self):
        pass


def progress_bar(total, initial, desc):
    """tqdm bar (tokens, tokens/s, ETA when total is known) on a terminal, else a silent stand-in."""
    if not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, dynamic_ncols=True, smoothing=0.05, desc=desc)


def _fmt_tokens(n):
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def describe_source(args, ds):
    """What the input is called in messages: the --source path as typed, or the hub dataset."""
    if not args.source:
        return f"{ds['hub']} ({ds['name']})"
    return args.source[0] if len(args.source) == 1 else "the --source input"


def suggest_shard_size(total_tokens):
    """A --shard_size that splits total_tokens (>= 2) into a val shard and up to nine train shards of
    about the same size (rounded up, so no tiny leftover shard at the end)."""
    return max(1, -(-total_tokens // 10))


def check_split(args):
    """Refuse --max_tokens that leaves no room for a train shard after the val shard, before reading
    anything: the trainer needs both (it would only say "run fineweb.py", which says "nothing to do")."""
    if args.max_tokens is not None and args.max_tokens <= args.shard_size:
        fix = (f"pass --shard_size {suggest_shard_size(args.max_tokens)} or smaller, or a larger --max_tokens"
               if args.max_tokens > 1 else "pass a larger --max_tokens")
        raise UserError(f"--max_tokens {args.max_tokens:,} is not more than --shard_size {args.shard_size:,}: everything "
                        f"would go to the val shard and no train shard would be written; {fix}")


def check_enough_tokens(args, ds, writer):
    """At the end of the input, before the last shard is written: refuse an input with no document,
    or one that all fits in the val shard (no shard is written yet then, see ShardWriter)."""
    total, size = writer.total, writer.shard_size
    if total == 0:
        raise UserError(f"no documents found in {describe_source(args, ds)} (empty documents are skipped); "
                        "check the --source files")
    if not writer.manifest["shards"] and total <= size:
        raise UserError(f"{describe_source(args, ds)} holds only {total:,} tokens, "
                        f"{'exactly' if total == size else 'less than'} one --shard_size ({size:,}): everything would go "
                        f"to the val shard and no train shard would be written; pass --shard_size "
                        f"{suggest_shard_size(total)} or smaller")


def with_next_step(e, out_dir, shards, file_starts):
    """A problem inside an input file (e.input_file): end its message with what will actually work.

    Nothing finished: fixing the file and re-running just works (the run left no manifest behind).
    Shards finished: the fixed file has another size than the settings they were made with record, so
    the re-run is refused as "different settings"; only a fresh --local_dir (or deleting it) works.
    file_starts: input file -> index of its first document; absent when it begins before the resume point.
    """
    if not shards:
        return UserError(f"{e}; {e.fix} and re-run")
    start = file_starts.get(e.input_file)
    last = shards[-1]
    if start is None or (start, 0) < (last["end_doc"], last["end_offset"]):
        why = f"its {len(shards)} finished shards hold tokens from {e.read_part or 'it'}"
    else:
        why = (f"its {len(shards)} finished shards came from the files before it, but the settings they were made "
               "with record this file's size")
    return UserError(f"{e}; {e.fix}, then delete {out_dir} ({why}) or use another --local_dir")


def missing_dirs(path):
    """path and those of its parents that do not exist yet, deepest first: what mkdir(parents=True) creates."""
    missing, path = [], path.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    return missing


def forget_failed_run(out_dir, created_dirs):
    """A run that finished no shard leaves the output as it found it: no manifest claiming settings (so
    the corrected re-run, e.g. with another --shard_size, starts fresh) and none of the folders it made."""
    if not list_shard_files(out_dir):
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    for d in created_dirs:
        try:
            d.rmdir()
        except OSError:
            break  # not empty: leave it


def write_all_shards(args, ds, out_dir, manifest, executor=None):
    """Tokenize the input, from where the finished shards end, into shards -> (writer, empty docs skipped).

    Raises UserError on bad input; for a bad input file the message ends with what to do next.
    """
    writer = ShardWriter(out_dir, manifest)
    settings = manifest["settings"]
    skip_docs, skip_tokens = writer.pos
    if manifest["shards"]:
        print(f"resuming {out_dir}: {len(manifest['shards'])} shards ({writer.tokens_done:,} tokens) already finished; "
              f"continuing at document {skip_docs:,}" + (f", token {skip_tokens:,}" if skip_tokens else ""))

    if settings["input"]["type"] == "files":
        files = [Path(f["path"]) for f in settings["input"]["files"]]
        progress = ReadProgress(sum(f["bytes"] for f in settings["input"]["files"]))
        segments = iter_source_segments(files, skip_docs, progress)
        total = None  # estimated from the bytes read as we go
    else:
        progress = None
        segments = iter_hub_segments(ds["hub"], ds["name"], skip_docs)
        total = int(ds["approx_tokens"])
    if args.max_tokens is not None:
        total = args.max_tokens if total is None else min(total, args.max_tokens)

    own_executor = executor is None
    if own_executor:
        executor = make_executor(args.workers)
    executor.submit(int).result()  # start the workers now: fork before tqdm starts its monitor thread

    bar = progress_bar(total=total, initial=writer.tokens_done, desc=out_dir.name)
    def on_shard(shard):
        bar.write(f"wrote {shard['file']}: {shard['tokens']:,} tokens (documents {shard['start_doc']:,}.."
                  f"{shard['end_doc'] - (shard['end_offset'] == 0):,})", file=sys.stdout)
    writer.on_shard = on_shard

    file_starts = {}  # input file -> index of its first document (absent: it begins before the resume point)
    empty_docs = 0
    batches = tokenize_documents(segments, executor, max_inflight=2 * args.workers + 1)
    try:
        if not writer.full:
            for tokens, lengths, marks in batches:
                for path, docs_before in marks:
                    file_starts[path] = writer.pos[0] + docs_before
                if skip_tokens and len(lengths):  # a shard boundary cut this document: drop what was written
                    if lengths[0] <= skip_tokens:
                        raise UserError(f"document {skip_docs} is shorter than the manifest says; the input changed "
                                        f"since the finished shards were made: delete {out_dir} to start over")
                    tokens, lengths = tokens[skip_tokens:], lengths.copy()
                    lengths[0] -= skip_tokens
                    skip_tokens = 0
                empty_docs += int(np.count_nonzero(lengths == 0))
                before = writer.total
                writer.add(tokens, lengths)
                if progress is not None and args.max_tokens is None:
                    bar.total = max(writer.total, progress.estimate_total(writer.total) or 0)
                bar.update(writer.total - before)
                if writer.full:
                    break
            if skip_tokens:
                raise UserError(f"document {skip_docs} is missing; the input changed since the finished shards "
                                f"were made: delete {out_dir} to start over")
        check_enough_tokens(args, ds, writer)
        writer.finish_shard()  # the last shard holds the rest
    except UserError as e:
        if e.input_file is None:  # not about one input file (e.g. check_enough_tokens): as it is
            raise
        raise with_next_step(e, out_dir, manifest["shards"], file_starts) from None
    finally:
        batches.close()  # cancels encodes still queued
        if own_executor:
            # wait=True: only the batches already running finish (<0.1 s each); wait=False races with
            # the interpreter's exit in CPython 3.11 ("Bad file descriptor" noise on stderr)
            executor.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return writer, empty_docs


def run(args, executor=None):
    """The whole job; returns the summary dict. Raises UserError on bad input/output dir.

    executor: what encodes the batches (default: make_executor(args.workers)); the benchmark passes
    a thread pool here to compare the two.
    """
    t0 = time.time()
    ds = DATASETS[args.dataset]
    out_dir = Path(args.local_dir) if args.local_dir else Path(__file__).resolve().parent / ds["local_dir"]
    settings = make_settings(args)
    manifest = open_output(out_dir, settings)
    shards = manifest["shards"]
    if manifest["complete"]:
        t = manifest["totals"]
        if t["shards"] == 1:  # made before fineweb.py refused inputs that fit in the val shard
            raise UserError(f"{out_dir} holds only a val shard ({t['tokens']:,} tokens) and no train shard (an older "
                            f"fineweb.py made it); delete {out_dir} and re-run with --shard_size "
                            f"{suggest_shard_size(t['tokens'])} or smaller")
        print(f"nothing to do: {out_dir} already holds the finished output ({t['shards']} shards, "
              f"{t['tokens']:,} tokens from {t['docs']:,} documents)")
        return dict(t, skipped=True)
    check_split(args)
    get_encoding()  # fail early (before reading anything) if the tokenizer is unavailable

    created = missing_dirs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # now, so that a bad --local_dir fails before any work
    for tmp in out_dir.glob(f"{settings['prefix']}_*.npy.tmp"):
        tmp.unlink()  # half-written shard of a killed run: never finished, redone below
    tokens_before = sum(s["tokens"] for s in shards)
    try:
        writer, empty_docs = write_all_shards(args, ds, out_dir, manifest, executor)
    except UserError:
        if not shards:
            forget_failed_run(out_dir, created)
        raise

    docs = writer.pos[0] + (writer.pos[1] > 0)  # documents read, empty ones included (their numbering)
    elapsed = time.time() - t0
    new_tokens = writer.tokens_done - tokens_before
    totals = dict(docs=docs, tokens=writer.tokens_done, shards=len(shards))
    manifest.update(complete=True, totals=totals)
    write_manifest(out_dir, manifest)
    print(f"done: {docs:,} documents, {writer.tokens_done:,} tokens ({_fmt_tokens(writer.tokens_done)}) in "
          f"{len(shards)} shards (1 val + {len(shards) - 1} train) in {out_dir}; this run: "
          f"{_fmt_tokens(new_tokens)} tokens in {elapsed:.1f}s, {new_tokens / max(elapsed, 1e-9) / 1e6:.2f}M tokens/s"
          + (f", {empty_docs:,} empty documents skipped" if empty_docs else ""))
    return dict(totals, seconds=elapsed, new_tokens=new_tokens, skipped=False)


def main(argv=None):
    args = parse_args(argv)
    try:
        run(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenProcessPool:
        print("error: an encoder process died (out of memory? try fewer --workers); finished shards are kept, "
              "re-run to resume", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `python fineweb.py | head`: stop quietly, finished shards are kept
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 1
    except OSError as e:  # output side: disk full, no permission, --local_dir is a file, ...
        print(f"error: {e}; fix that and re-run (finished shards are kept)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
