"""Tests for fineweb.py (CPU, offline): shards from --source must be exactly what a direct tiktoken
reference gives (tokens, cut points, names, np.save bytes); resume after a real SIGKILL; bad input
(one `error:` line, exit 1, earlier output untouched), through the command line."""

import gzip
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import fineweb

REPO = Path(__file__).resolve().parents[1]
# CI clones the repo beside shared/
CORPUS = Path(__file__).resolve().parents[2] / "shared/data/corpus"

EOT = 50256
PREFIX = "edufineweb"


# -----------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="session")
def enc():
    import tiktoken
    return tiktoken.get_encoding("gpt2")


WORDS = (
    "the of and to in is was for on that with as by at from his her an were are which this be or "
    "photosynthesis mitochondria equation velocity Constitution amendment theorem derivative "
    "café naïve résumé Zürich 東京 数学 Москва 🙂 🚀 "
    "1,234.56 3.14159 x^2 sqrt(a/b) e-mail "
    "don't can't I'm you're"
).split()


def make_docs(n, seed, mean_words=60):
    """Deterministic synthetic documents with unicode, digits, odd whitespace and edge cases."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        k = max(1, int(rng.expovariate(1 / mean_words)))
        words = rng.choices(WORDS, k=k)
        text = ""
        for w in words:
            text += w + rng.choice([" ", " ", " ", ", ", ". ", "\n", "\n\n", "  ", "\t"])
        docs.append(text.strip() if rng.random() < 0.5 else text)
    return docs


# edge-case documents every input gets: empty (skipped, no EOT), whitespace only, a literal special
# token (must stay ordinary text), and one long document that spans several small shards
EDGE_DOCS = [
    "",
    "   \n ",
    "a literal <|endoftext|> inside stays plain text",
    " ".join(make_docs(40, 99)),
]


def reference_tokens(enc, texts, max_tokens=None):
    """[EOT] + encode_ordinary(text) for every non-empty doc, concatenated. (N,) uint16

    build-nanogpt's loop, except that an empty document ("") gets nothing rather than a lone EOT."""
    parts = []
    for t in texts:
        if t == "":
            continue
        parts.append([EOT])
        parts.append(enc.encode_ordinary(t))
    flat = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])
    assert flat.max() < 2**16
    return flat[:max_tokens].astype(np.uint16)


def reference_shards(enc, texts, shard_size, max_tokens=None, prefix=PREFIX):
    flat = reference_tokens(enc, texts, max_tokens)
    return {f"{prefix}_{'val' if i == 0 else 'train'}_{i:06d}.npy": flat[s:s + shard_size]
            for i, s in enumerate(range(0, len(flat), shard_size))}


def npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def assert_shards(out_dir, expected, old_entries=0):
    """Output == reference: same files, same tokens, uint16, and byte-identical to np.save."""
    out_dir = Path(out_dir)
    names = sorted(p.name for p in out_dir.glob("*.npy"))
    assert names == sorted(expected)
    for name, ref in expected.items():
        arr = np.load(out_dir / name)
        assert arr.dtype == np.uint16 and arr.ndim == 1
        np.testing.assert_array_equal(arr, ref)
        assert (out_dir / name).read_bytes() == npy_bytes(ref)
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["complete"]
    check_manifest(out_dir, manifest, old_entries)
    return manifest


def check_manifest(out_dir, manifest, old_entries=0):
    """Shard records chain up: token offsets add up, each shard starts where the previous ended;
    max_token is the shard's largest token id (the first old_entries come from a manifest
    without it)."""
    token_start, pos = 0, (0, 0)
    for i, s in enumerate(manifest["shards"]):
        assert s["index"] == i and s["token_start"] == token_start
        assert (s["start_doc"], s["start_offset"]) == pos
        assert s["bytes"] == (Path(out_dir) / s["file"]).stat().st_size  # what the trainer checks
        if i < old_entries:
            assert "max_token" not in s
        else:
            assert type(s["max_token"]) is int and s["max_token"] == int(
                np.load(Path(out_dir) / s["file"]).max()
            )
        token_start += s["tokens"]
        pos = (s["end_doc"], s["end_offset"])


def write_jsonl(path, texts, extra=None, gz=False, blank_lines=False):
    lines = []
    for i, t in enumerate(texts):
        rec = {"text": t, **(extra(i) if extra else {})}
        lines.append(json.dumps(rec, ensure_ascii=(i % 2 == 0)))  # mix escaped and raw unicode
        if blank_lines and i % 7 == 3:
            lines.append("   ")
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_parquet(path, texts, extra_cols=None, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq
    cols = {**(extra_cols or {}), "text": texts}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def run_cli(*args, env=None, timeout=120, cwd=None):
    return subprocess.run(
        [sys.executable, str(REPO / "fineweb.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def run_main(capsys, *args):
    """fineweb.main(argv) in this process (no interpreter start, no tokenizer load): the same result
    fields as run_cli, for the tests where a subprocess adds nothing."""
    capsys.readouterr()
    code = fineweb.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out, err)


def snapshot(out_dir):
    """name -> (bytes, mtime_ns) of every file, to prove nothing was touched."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(Path(out_dir).iterdir())}


def assert_one_line_error(r, *needles):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -----------------------------------------------------------------------------
# output == reference


def test_jsonl_matches_reference(tmp_path, enc):
    texts = make_docs(120, 1) + EDGE_DOCS + make_docs(30, 2)
    src = write_jsonl(tmp_path / "in.jsonl", texts, blank_lines=True)
    out = tmp_path / "out"
    r = run_cli("--source", src, "--local_dir", out, "--shard_size", 1000)
    assert r.returncode == 0, r.stderr
    expected = reference_shards(enc, texts, 1000)
    assert len(expected) >= 5
    manifest = assert_shards(out, expected)
    assert manifest["totals"] == dict(
        docs=len(texts), tokens=sum(map(len, expected.values())), shards=len(expected)
    )
    assert any(s["end_offset"] > 0 for s in manifest["shards"])  # boundaries do cut documents
    assert f"{len(texts):,} documents" in r.stdout and "done:" in r.stdout


def test_mixed_formats_folder_and_schemas(tmp_path, enc):
    """jsonl.gz + parquet + jsonl + txt with different extra columns, a folder searched recursively
    (sorted), plus an explicit file after it; unrelated files in the folder are ignored."""
    d = tmp_path / "data"
    a, b, c, t, extra = (
        make_docs(50, 3),
        make_docs(40, 4),
        make_docs(30, 5),
        "A whole .txt file\n\nis one document.\n",
        make_docs(20, 6),
    )
    write_jsonl(
        d / "a.jsonl.gz",
        a,
        extra=lambda i: {"id": f"<urn:{i}>", "url": "http://x", "score": 0.5},
        gz=True,
    )
    write_parquet(
        d / "b" / "c.parquet",
        b,
        extra_cols={"score": [float(i) for i in range(len(b))], "lang": ["en"] * len(b)},
        row_group_size=7,
    )
    write_jsonl(d / "b" / "d.jsonl", c, extra=lambda i: {"meta": {"nested": [i]}})
    (d / "e.txt").write_text(t, encoding="utf-8")
    (d / "README.md").write_text("not data")
    more = write_jsonl(tmp_path / "more.jsonl", extra + EDGE_DOCS)
    out = tmp_path / "out"
    r = run_cli("--source", d, more, "--local_dir", out, "--shard_size", 1500)
    assert r.returncode == 0, r.stderr
    manifest = assert_shards(out, reference_shards(enc, a + b + c + [t] + extra + EDGE_DOCS, 1500))
    files = [Path(f["path"]).name for f in manifest["settings"]["input"]["files"]]
    assert files == ["a.jsonl.gz", "c.parquet", "d.jsonl", "e.txt", "more.jsonl"]


def test_real_corpus_slice(tmp_path, enc):
    src = CORPUS / "openstax_textbooks_ccby.jsonl.gz"
    if not src.exists():
        pytest.skip("shared/data corpus not available")
    with gzip.open(src, "rt", encoding="utf-8") as f:
        texts = [json.loads(next(f))["text"] for _ in range(150)]
    inp = write_jsonl(tmp_path / "slice.jsonl.gz", texts, gz=True)
    r = run_cli("--source", inp, "--local_dir", tmp_path / "out", "--shard_size", 100_000)
    assert r.returncode == 0, r.stderr
    assert_shards(tmp_path / "out", reference_shards(enc, texts, 100_000))


def test_lone_surrogate_like_encode_ordinary(tmp_path, enc):
    # json.loads can produce lone surrogates from \ud800 escapes
    texts = ["before \ud800 after", "ok"]
    src = tmp_path / "s.jsonl"
    src.write_text("\n".join(json.dumps({"text": x}) for x in texts))
    assert (
        fineweb.main(
            ["--source", str(src), "--local_dir", str(tmp_path / "out"), "--shard_size", "3"]
        )
        == 0
    )
    assert_shards(tmp_path / "out", reference_shards(enc, texts, 3))


@pytest.mark.parametrize(
    "max_tokens,shard_size", [(2500, 1000), (2000, 1000), (1001, 1000), (10**7, 1000)]
)
def test_max_tokens(tmp_path, enc, max_tokens, shard_size):
    texts = make_docs(80, 7)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    r = run_cli(
        "--source",
        src,
        "--local_dir",
        tmp_path / "out",
        "--shard_size",
        shard_size,
        "--max_tokens",
        max_tokens,
    )
    assert r.returncode == 0, r.stderr
    expected = reference_shards(enc, texts, shard_size, max_tokens=max_tokens)
    manifest = assert_shards(tmp_path / "out", expected)
    total = min(max_tokens, len(reference_tokens(enc, texts)))
    assert manifest["totals"]["tokens"] == total == sum(len(v) for v in expected.values())


def _read_all(segments):
    """Drain a segment generator like the workers do -> (texts, records skipped (its return
    value))."""
    texts, gen = [], segments
    while True:
        try:
            seg = next(gen)
        except StopIteration as stop:
            return texts, stop.value
        if seg[0] == "texts":
            texts.extend(seg[1])
        elif seg[0] == "jsonl":
            assert fineweb.parse_jsonl_block(seg[1], seg[2], seg[3], texts) is None


@pytest.mark.parametrize("block_bytes", [7, 64, 1000, 1 << 20])
def test_jsonl_blocks_and_skip(tmp_path, block_bytes):
    """Reading in blocks (lines split across blocks, a line longer than many blocks, blank lines,
    CRLF, no final newline) and skipping records gives exactly the remaining texts."""
    texts = make_docs(30, 16, mean_words=8) + ["x" * 5000] + make_docs(10, 17, mean_words=8)
    lines = []
    for i, t in enumerate(texts):
        lines.append(json.dumps({"text": t, "n": i}))
        if i % 5 == 0:
            lines.append("")
    raw = "\r\n".join(lines[:10]) + "\n" + "\n".join(lines[10:])  # no newline at the very end
    for name, data in [("a.jsonl", raw.encode()), ("a.jsonl.gz", gzip.compress(raw.encode()))]:
        path = tmp_path / name
        path.write_bytes(data)
        for skip in [0, 1, 6, 30, 31, len(texts) - 1, len(texts), len(texts) + 5]:
            got, skipped = _read_all(fineweb.read_jsonl(path, skip, block_bytes=block_bytes))
            assert got == texts[skip:] and skipped == min(skip, len(texts)), (name, skip)


def test_bad_line_number_across_blocks(tmp_path):
    lines = [json.dumps({"text": f"doc {i}"}) for i in range(50)]
    lines[37] = '{"text": oops}'
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join(lines) + "\n")
    texts, error = [], None
    for seg in fineweb.read_jsonl(path, 0, block_bytes=40):
        error = error or fineweb.parse_jsonl_block(seg[1], seg[2], seg[3], texts)
        if error:
            break
    assert "line 38: invalid JSON" in str(error) and texts == [f"doc {i}" for i in range(37)]


def test_parquet_skip(tmp_path):
    texts = make_docs(45, 18, mean_words=5)
    path = write_parquet(tmp_path / "p.parquet", texts, row_group_size=10)
    for skip in [0, 3, 10, 11, 44, 45, 50]:
        got, skipped = _read_all(fineweb.read_parquet(path, skip))
        assert got == texts[skip:] and skipped == min(skip, len(texts))
    files = [write_parquet(tmp_path / "q.parquet", texts[:7]), (tmp_path / "t.txt"), path]
    files[1].write_text("one doc")
    all_texts = texts[:7] + ["one doc"] + texts
    for skip in [0, 5, 7, 8, 9, 30]:
        assert _read_all(fineweb.read_files(files, skip))[0] == all_texts[skip:]


# -----------------------------------------------------------------------------
# an input that all fits in the val shard, empty documents


@pytest.mark.parametrize("amount,folder", [("less", "new"), ("exactly", "existing")])
def test_input_within_one_shard_is_refused(tmp_path, enc, capsys, amount, folder):
    """Today's trap: with the default --shard_size a small input made a val shard and no train shard
    (the trainer then asks for fineweb.py, which says "nothing to do"). Now: an error with a
    --shard_size that works, the folder as it was, and that re-run in the same --local_dir works."""
    text = " ".join(make_docs(30, 20))
    src = tmp_path / "input.txt"
    src.write_text(text, encoding="utf-8")
    total = len(reference_tokens(enc, [text]))
    out = tmp_path / "data" / "out"  # two folder levels that do not exist yet
    if folder == "existing":
        out.mkdir(parents=True)
        (out / "notes.txt").write_text("earlier work, not fineweb.py's")
        before = snapshot(out)
    args = ["--source", src, "--local_dir", out] + (
        ["--shard_size", total] if amount == "exactly" else []
    )
    r = run_main(capsys, *args)
    what = (
        f"exactly one --shard_size ({total:,})"
        if amount == "exactly"
        else "less than one --shard_size (100,000,000)"
    )
    line = assert_one_line_error(
        r,
        f"{src} holds only {total:,} tokens, {what}: everything would go to the val shard "
        "and no train shard would be written; pass --shard_size ",
    )
    if folder == "new":
        assert not (tmp_path / "data").exists()  # not even the folders it would have written into
    else:
        assert snapshot(out) == before
    suggested = int(re.fullmatch(r".*; pass --shard_size (\d+) or smaller", line).group(1))
    r = run_main(capsys, "--source", src, "--local_dir", out, "--shard_size", suggested)
    assert r.returncode == 0, r.stderr
    expected = reference_shards(enc, [text], suggested)
    assert len(expected) >= 4  # a val shard and a few train shards
    assert_shards(out, expected)


@pytest.mark.parametrize("max_tokens", [1000, 777])
def test_max_tokens_within_one_shard_is_refused(tmp_path, capsys, max_tokens):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(80, 7))
    out = tmp_path / "out"
    r = run_main(
        capsys,
        "--source",
        src,
        "--local_dir",
        out,
        "--shard_size",
        1000,
        "--max_tokens",
        max_tokens,
    )
    assert_one_line_error(
        r,
        f"--max_tokens {max_tokens:,} is not more than --shard_size 1,000",
        f"pass --shard_size {-(-max_tokens // 10)} or smaller, or a larger --max_tokens",
    )
    assert not out.exists()


def test_empty_documents_are_skipped(tmp_path, enc, capsys):
    """An empty .txt, empty jsonl records and empty parquet rows give no tokens (not even an
    EOT), but keep their place in the document numbering."""
    d = tmp_path / "src"
    d.mkdir()
    (d / "a_empty.txt").write_text("")
    write_jsonl(d / "b.jsonl", ["", "x y", "", "", "z"])
    write_parquet(d / "c.parquet", ["", "p q r", ""])
    (d / "d.txt").write_text("last")
    texts = ["", "", "x y", "", "", "z", "", "p q r", "", "last"]
    out = tmp_path / "out"
    r = run_main(capsys, "--source", d, "--local_dir", out, "--shard_size", 4)
    assert r.returncode == 0, r.stderr
    manifest = assert_shards(out, reference_shards(enc, texts, 4))
    tokens = np.concatenate([np.load(out / s["file"]) for s in manifest["shards"]])
    assert np.count_nonzero(tokens == EOT) == 4  # one per non-empty document
    assert manifest["totals"]["docs"] == len(texts)
    assert "6 empty documents skipped" in r.stdout


def test_empty_documents_past_max_tokens_are_not_counted(tmp_path, capsys):
    """--max_tokens stops inside a batch: only the empty documents before the stop were skipped."""
    # 4 tokens per "x y z"
    src = write_jsonl(tmp_path / "in.jsonl", ["", "x y z"] * 20 + [""] * 1000)
    r = run_main(capsys, "--source", src, "--local_dir", tmp_path / "out", "--shard_size", 10,
                 "--max_tokens", 30, "--workers", 1)
    assert r.returncode == 0, r.stderr
    # 30 tokens end inside the 8th "x y z" (document 15): documents 0, 2, ..., 14 are the empty
    # ones read
    assert (
        "done: 16 documents, 30 tokens" in r.stdout and "8 empty documents skipped" in r.stdout
    ), r.stdout


@pytest.mark.parametrize("kind", ["empty_txt", "empty_records"])
def test_only_empty_documents_is_no_documents(tmp_path, capsys, kind):
    if kind == "empty_txt":
        src = tmp_path / "empty.txt"
        src.write_text("")
    else:
        src = write_jsonl(tmp_path / "empty.jsonl", ["", "", ""])
    out = tmp_path / "out"
    r = run_main(capsys, "--source", src, "--local_dir", out, "--shard_size", 10)
    assert_one_line_error(r, f"no documents found in {src} (empty documents are skipped)")
    assert not out.exists()


def test_resume_across_empty_documents(tmp_path, enc, capsys):
    """Resume after every shard of an input whose boundaries fall right after empty documents: the
    manifest counts them (end_doc points past them), so resuming skips exactly those records."""
    first = "a first document, the whole val shard"
    long_doc = "spans several shards " * 12
    shard_size = len(enc.encode_ordinary(first)) + 1
    texts = [first, "", long_doc, "", "", "short", "", "and the last one"]
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out"
    args = ("--source", src, "--local_dir", out, "--shard_size", shard_size)
    assert run_main(capsys, *args).returncode == 0
    expected = reference_shards(enc, texts, shard_size)
    full = assert_shards(out, expected)
    ends = [(s["end_doc"], s["end_offset"]) for s in full["shards"]]
    assert ends[0] == (2, 0)  # shard 0 is document 0, and the empty document 1 is consumed with it
    assert ends[1] == (2, shard_size)  # shard 1 cuts document 2, the one right after the empty one
    for k in range(1, len(full["shards"])):
        # pretend the run died after k shards (see test_resume_after_kill_while_writing_a_shard)
        for s in full["shards"][k:]:
            (out / s["file"]).unlink()
        partial = dict(full, shards=full["shards"][:k], complete=False)
        partial.pop("totals")
        (out / "manifest.json").write_text(json.dumps(partial))
        r = run_main(capsys, *args)
        assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
        assert_shards(out, expected)


def test_writer_batch_of_only_empty_documents_moves_on(tmp_path):
    manifest = dict(
        format=fineweb.MANIFEST_FORMAT,
        settings=dict(prefix=PREFIX, shard_size=4, max_tokens=None),
        shards=[],
        complete=False,
    )
    w = fineweb.ShardWriter(tmp_path, manifest)
    w.add(np.array([EOT, 1, 2], np.uint16), np.array([3]))
    w.add(np.empty(0, np.uint16), np.array([0, 0]))  # documents 1 and 2 are empty
    assert w.pos == (3, 0) and not manifest["shards"]
    w.add(np.array([EOT, 5, 6], np.uint16), np.array([0, 3]))  # document 3 empty, 4 has 3 tokens
    assert [(s["end_doc"], s["end_offset"], s["max_token"]) for s in manifest["shards"]] == [
        (4, 1, EOT)
    ]
    assert w.pos == (5, 0)


# -----------------------------------------------------------------------------
# resume


def test_rerun_finished_is_noop(tmp_path, enc):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(40, 8))
    out = tmp_path / "out"
    assert run_cli("--source", src, "--local_dir", out, "--shard_size", 700).returncode == 0
    before = snapshot(out)
    r = run_cli("--source", src, "--local_dir", out, "--shard_size", 700)
    assert r.returncode == 0 and "nothing to do" in r.stdout, r.stdout + r.stderr
    assert snapshot(out) == before


# Runs fineweb.main(argv) in a fresh interpreter that SIGKILLs itself at one moment of writing shard
# `index`: the function patched (from outside fineweb.py) is the step during which the machine died.
KILL_WHILE_WRITING = """
import os, signal, sys
import numpy as np
import fineweb

stage, index, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
target = fineweb.shard_name("edufineweb", index)  # the shard being written when the kill comes
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_save, real_replace, real_write_manifest = np.save, os.replace, fineweb.write_manifest

def save(f, tokens):  # np.save, as fineweb calls it on the open temp file
    if stage == "mid_write" and os.path.basename(f.name) == target + ".tmp":
        real_save(f, tokens[: len(tokens) // 2])  # half of it made it to the disk
        f.flush()
        os.fsync(f.fileno())
        die()
    real_save(f, tokens)

def replace(src, dst):
    if stage == "before_rename" and os.path.basename(dst) == target:
        die()  # the temp file is complete and fsynced
    real_replace(src, dst)

def write_manifest(out_dir, manifest):
    lists_target = bool(manifest["shards"]) and manifest["shards"][-1]["file"] == target
    if stage == "before_record" and lists_target:
        die()  # the shard file is in place, the manifest does not list it yet
    real_write_manifest(out_dir, manifest)
    if stage == "after_record" and lists_target:
        die()  # the manifest lists the shard; the run got no further

np.save, os.replace, fineweb.write_manifest = save, replace, write_manifest
sys.exit(fineweb.main(argv))
"""


@pytest.mark.parametrize("fmt,stage", [("jsonl.gz", "mid_write"), ("jsonl.gz", "before_rename"),
                                       ("jsonl.gz", "before_record"), ("jsonl.gz", "after_record"),
                                       ("parquet", "before_rename"), ("parquet", "after_record")])
def test_resume_after_kill_while_writing_a_shard(tmp_path, enc, capsys, fmt, stage):
    """SIGKILL at each step of writing shard 2, then the same command: it keeps the finished
    shards, continues, and the result is byte-identical to an uninterrupted run."""
    texts = make_docs(150, 9) + EDGE_DOCS
    src = (write_jsonl(tmp_path / "in.jsonl.gz", texts, gz=True) if fmt == "jsonl.gz"
           else write_parquet(tmp_path / "in.parquet", texts, row_group_size=16))
    out = tmp_path / "out"
    args = ["--source", src, "--local_dir", out, "--shard_size", 900]
    r = subprocess.run([sys.executable, "-c", KILL_WHILE_WRITING, stage, "2", *map(str, args)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr)
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    assert len(manifest["shards"]) == (3 if stage == "after_record" else 2)
    shard2 = out / f"{PREFIX}_train_000002.npy"
    tmp = out / f"{PREFIX}_train_000002.npy.tmp"
    assert tmp.exists() == (stage in ("mid_write", "before_rename"))  # a leftover temp file...
    assert shard2.exists() == (stage in ("before_record", "after_record"))
    finished = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in manifest["shards"]}
    assert manifest["shards"][-1]["end_offset"] > 0  # the kill came mid-document: resume there

    r = run_main(capsys, *args)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    assert not tmp.exists()  # ...is not taken for finished: the shard is redone, the temp file gone
    assert_shards(out, reference_shards(enc, texts, 900))
    assert {f: (out / f).stat().st_mtime_ns for f in finished} == finished  # not rewritten


def test_resume_after_external_sigkill(tmp_path, enc):
    """Really kill a running conversion (SIGKILL once its first shard exists), resume, compare."""
    texts = make_docs(6000, 10)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out"
    args = ["--source", src, "--local_dir", out, "--shard_size", 20_000, "--workers", 1]
    proc = subprocess.Popen([sys.executable, str(REPO / "fineweb.py"), *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / f"{PREFIX}_val_000000.npy"
    deadline = time.time() + 60
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # its encoder processes notice the parent is gone and exit instead of lingering as orphans
    if Path("/proc").is_dir():
        def alive():
            n = 0
            for p in Path("/proc").iterdir():
                try:
                    n += p.name.isdigit() and str(out).encode() in (p / "cmdline").read_bytes()
                except OSError:
                    pass
            return n
        deadline = time.time() + 10
        while alive() and time.time() < deadline:
            time.sleep(0.1)
        assert alive() == 0
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["complete"]:
        pytest.skip("the conversion finished before it could be killed")
    done = len(manifest["shards"])
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    expected = reference_shards(enc, texts, 20_000)
    assert done < len(expected)
    assert_shards(out, expected)


def test_hub_path_uses_same_pipeline(tmp_path, enc, monkeypatch, capsys):
    """No network here: a fake `datasets` module checks the exact load_dataset call and that the
    hub stream goes through the same writer (with resume via ds.skip)."""
    texts = make_docs(60, 11)
    calls = []

    class FakeStream:
        def __init__(self, rows):
            self.rows = rows

        def skip(self, n):
            calls.append(("skip", n))
            return FakeStream(self.rows[n:])

        def iter(self, batch_size):  # batches as dicts of columns
            for i in range(0, len(self.rows), batch_size):
                rows = self.rows[i:i + batch_size]
                yield {key: [row[key] for row in rows] for key in rows[0]}

    def load_dataset(path, name=None, split=None, streaming=False):
        calls.append((path, name, split, streaming))
        return FakeStream([{"text": t, "id": i} for i, t in enumerate(texts)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    out = tmp_path / "out"
    assert (
        fineweb.main(["--local_dir", str(out), "--shard_size", "800", "--max_tokens", "2000"]) == 0
    )
    assert calls == [("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", True)]
    m1 = assert_shards(out, reference_shards(enc, texts, 800, max_tokens=2000))
    assert m1["settings"]["input"] == dict(
        type="hub", path="HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train"
    )

    # classic FineWeb: other repo, other prefix and default folder name; resume after losing shard 2
    calls.clear()
    out2 = tmp_path / "out2"
    assert (
        fineweb.main(["--dataset", "classic-10BT", "--local_dir", str(out2), "--shard_size", "800"])
        == 0
    )
    manifest = json.loads((out2 / "manifest.json").read_text())
    assert calls == [("HuggingFaceFW/fineweb", "sample-10BT", "train", True)]
    expected = reference_shards(enc, texts, 800, prefix="fineweb")
    assert_shards(out2, expected)
    # pretend the run died after two shards: drop the later ones from the manifest and disk
    for s in manifest["shards"][2:]:
        (out2 / s["file"]).unlink()
    manifest.update(shards=manifest["shards"][:2], complete=False)
    manifest.pop("totals")
    (out2 / "manifest.json").write_text(json.dumps(manifest))
    calls.clear()
    assert (
        fineweb.main(["--dataset", "classic-10BT", "--local_dir", str(out2), "--shard_size", "800"])
        == 0
    )
    assert calls[1] == ("skip", manifest["shards"][1]["end_doc"])
    assert_shards(out2, expected)
    assert fineweb.DATASETS["edu-100BT"]["name"] == "sample-100BT"
    assert fineweb.DATASETS["edu-10BT"]["local_dir"] == "edu_fineweb10B"


# -----------------------------------------------------------------------------
# bad input: one line on stderr, exit 1, nothing finished touched


def _bad_file(tmp_path, kind):
    if kind == "garbage_gzip":
        p = tmp_path / "bad.jsonl.gz"
        p.write_bytes(b"this is not gzip at all" * 10)
    elif kind == "truncated_gzip":
        p = write_jsonl(tmp_path / "bad.jsonl.gz", make_docs(200, 12), gz=True)
        p.write_bytes(p.read_bytes()[:-300])
    elif kind == "bad_json":
        p = tmp_path / "bad.jsonl"
        p.write_text('{"text": "fine"}\n{"text": "broken\n')
    elif kind == "no_text":
        p = tmp_path / "bad.jsonl"
        p.write_text('{"text": "fine"}\n{"content": "where is text"}\n')
    elif kind == "text_not_string":
        p = tmp_path / "bad.jsonl"
        p.write_text('{"text": "fine"}\n{"text": null}\n')
    elif kind == "not_an_object":
        p = tmp_path / "bad.jsonl"
        p.write_text('{"text": "fine"}\n["text"]\n')
    elif kind == "bad_parquet":
        p = tmp_path / "bad.parquet"
        p.write_bytes(b"PAR1" + os.urandom(100))
    elif kind == "parquet_no_text":
        import pyarrow as pa
        import pyarrow.parquet as pq
        p = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"content": ["a", "b"]}), p)
    elif kind == "parquet_null_text":
        p = write_parquet(tmp_path / "bad.parquet", ["fine", None])
    elif kind == "bad_utf8_txt":
        p = tmp_path / "bad.txt"
        p.write_bytes(b"caf\xe9 latin-1")
    return p


NOT_A_DOC = "line 2: not a JSON object with a \"text\" string"


@pytest.mark.parametrize(
    "kind,needle",
    [
        ("garbage_gzip", "cannot read"),
        ("truncated_gzip", "cannot read"),
        ("bad_json", "line 2: invalid JSON"),
        ("no_text", NOT_A_DOC),
        ("text_not_string", NOT_A_DOC),
        ("not_an_object", NOT_A_DOC),
        ("bad_parquet", "cannot read parquet"),
        ("parquet_no_text", "no \"text\" column"),
        ("parquet_null_text", "row 1: \"text\" is null"),
        ("bad_utf8_txt", "cannot read it as UTF-8"),
    ],
)
def test_bad_input_file(tmp_path, enc, kind, needle):
    """A good file (enough for some shards) then a bad one: the shards before the error are finished
    and correct; re-running hits the same error and leaves every byte as it was."""
    good_texts = make_docs(60, 13)
    good = write_jsonl(tmp_path / "good.jsonl", good_texts)
    bad = _bad_file(tmp_path, kind)
    out = tmp_path / "out"
    args = ("--source", good, bad, "--local_dir", out, "--shard_size", 600)
    r = run_cli(*args)
    line = assert_one_line_error(r, needle, bad.name)
    # finished shards exist, so fixing the file alone would be refused as "different settings":
    # say so
    n = len(json.loads((out / "manifest.json").read_text())["shards"])
    assert line.endswith(
        f"; fix or replace that file, then delete {out} or use another --local_dir "
        f"(its {n} finished shards were made with the file as it is now)"
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) >= 2
    # (a truncated gzip may add shards from its readable part)
    ref = reference_tokens(enc, good_texts)
    assert sum(s["token_start"] + s["tokens"] <= len(ref) for s in manifest["shards"]) >= 2
    for s in manifest["shards"]:
        got, want = np.load(out / s["file"]), ref[s["token_start"]:s["token_start"] + s["tokens"]]
        np.testing.assert_array_equal(got[:len(want)], want)
    before = snapshot(out)
    r = run_cli(*args)
    assert_one_line_error(r, needle, bad.name)
    assert snapshot(out) == before


@pytest.fixture
def finished_output(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_docs(50, 14))
    out = tmp_path / "out"
    assert run_cli("--source", src, "--local_dir", out, "--shard_size", 800).returncode == 0
    return src, out


@pytest.mark.parametrize(
    "case",
    [
        "missing_file",
        "missing_folder_file",
        "unsupported",
        "other_settings",
        "other_source",
        "shards_without_manifest",
        "stray_shard",
        "finished_shard_changed",
    ],
)
def test_bad_input_keeps_finished_output(tmp_path, finished_output, case):
    src, out = finished_output
    args = ["--source", src, "--local_dir", out, "--shard_size", 800]
    needle = "error"
    if case == "missing_file":
        args[1:2] = [src, tmp_path / "nope.jsonl"]
        needle = "nope.jsonl: no such file"
    elif case == "missing_folder_file":
        (tmp_path / "empty").mkdir()
        args[1] = tmp_path / "empty"
        needle = "holds no"
    elif case == "unsupported":
        (tmp_path / "x.csv").write_text("text\nhi\n")
        args[1] = tmp_path / "x.csv"
        needle = "unsupported file type"
    elif case == "other_settings":
        args[-1] = 900
        needle = "different settings (shard_size: 800 then, 900 now)"
    elif case == "other_source":
        args[1] = write_jsonl(tmp_path / "other.jsonl", make_docs(5, 15))
        needle = (
            f"different settings (input 1: {src.resolve()} ({src.stat().st_size:,} bytes) then, "
            f"{args[1].resolve()} ({args[1].stat().st_size:,} bytes) now)"
        )
    elif case == "shards_without_manifest":
        (out / "manifest.json").unlink()
        needle = "but no manifest.json"
    elif case == "stray_shard":
        np.save(out / "fineweb_train_000007.npy", np.zeros(3, np.uint16))
        needle = "does not list (fineweb_train_000007.npy"
    elif case == "finished_shard_changed":
        p = out / f"{PREFIX}_train_000001.npy"
        p.write_bytes(p.read_bytes()[:-2])
        needle = "is missing or changed"
    before = snapshot(out)
    r = run_cli(*args)
    assert_one_line_error(r, needle)
    assert snapshot(out) == before


def test_corrupt_gz_replaced_before_any_shard(tmp_path, enc, capsys):
    """User story, nothing finished yet: a truncated .jsonl.gz -> "replace it and re-run" (and no
    manifest left behind); replacing it and re-running the very same command just works."""
    first, rest = make_docs(5, 22), make_docs(200, 23)
    good = write_jsonl(tmp_path / "a.jsonl", first)
    gz = write_jsonl(tmp_path / "b.jsonl.gz", rest, gz=True)
    intact = gz.read_bytes()
    gz.write_bytes(intact[:-300])
    total = len(reference_tokens(enc, first + rest))
    # a.jsonl alone does not finish a shard
    shard_size = max(len(reference_tokens(enc, first)), total // 4)
    out = tmp_path / "out"
    args = ("--source", good, gz, "--local_dir", out, "--shard_size", shard_size)
    r = run_main(capsys, *args)
    line = assert_one_line_error(r, f"{gz}: cannot read it (EOFError: ")
    assert line.endswith("; fix or replace that file and re-run")
    assert not out.exists()
    gz.write_bytes(intact)
    r = run_main(capsys, *args)
    assert r.returncode == 0, r.stderr
    expected = reference_shards(enc, first + rest, shard_size)
    assert len(expected) >= 4
    assert_shards(out, expected)


def test_corrupt_gz_after_finished_shards(tmp_path, enc, capsys, monkeypatch):
    """User story, shards finished from the readable part of a truncated .jsonl.gz: the error says
    to replace it AND start a fresh output; replacing it alone is refused with the exact difference;
    a fresh --local_dir then gives the right shards."""
    texts = make_docs(2600, 24)  # ~1.3 MB: more than the first 1 MB block read is intact
    gz = write_jsonl(tmp_path / "corpus" / "a.jsonl.gz", texts, gz=True)
    intact = gz.read_bytes()
    gz.write_bytes(intact[:-2000])
    args = ("--source", "corpus", "--local_dir", "out", "--shard_size", 50_000)
    r = run_cli(*args, cwd=tmp_path)
    line = assert_one_line_error(r, f"{gz.resolve()}: cannot read it after line ")
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    n = len(manifest["shards"])
    assert n >= 2 and not manifest["complete"]
    assert line.endswith(
        f"; fix or replace that file, then delete out or use another --local_dir (its {n} "
        "finished shards were made with the file as it is now)"
    )
    ref = reference_tokens(enc, texts)
    for s in manifest["shards"]:  # what was finished is right
        np.testing.assert_array_equal(
            np.load(out / s["file"]), ref[s["token_start"] : s["token_start"] + s["tokens"]]
        )
    before = snapshot(out)

    gz.write_bytes(intact)
    monkeypatch.chdir(tmp_path)  # the same relative paths, in this process from here on (faster)
    r = run_main(capsys, *args)
    path = gz.resolve()
    assert_one_line_error(
        r,
        f"out holds shards made with different settings (input 1: {path} "
        f"({len(intact) - 2000:,} bytes) then, {path} ({len(intact):,} bytes) now); "
        "use another --local_dir or delete out",
    )
    assert snapshot(out) == before

    r = run_main(capsys, "--source", "corpus", "--local_dir", "out2", "--shard_size", 50_000)
    assert r.returncode == 0, r.stderr
    assert_shards(tmp_path / "out2", reference_shards(enc, texts, 50_000))


def test_settings_change_names_the_first_difference():
    """The "different settings" reason is one line naming the first setting, or input file by
    position, that differs, with both values in full (never a cut-off repr)."""
    long = "/data/" + "fineweb_edu_sample_" * 6 + "a.jsonl.gz"

    def settings(*files, **kw):
        inp = dict(type="files", files=[dict(path=p, bytes=b) for p, b in files])
        return dict(input=inp, tokenizer="gpt2", eot=EOT, dtype="uint16", shard_size=800,
                    max_tokens=None, prefix=PREFIX, **kw)

    then = settings((long, 7_697_251), ("/data/b.jsonl", 10))
    hub = dict(type="hub", path="HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train")
    cases = [
        (
            settings((long, 7_700_000), ("/data/b.jsonl", 10)),
            f"input 1: {long} (7,697,251 bytes) then, {long} (7,700,000 bytes) now",
        ),
        (
            settings((long, 7_697_251), ("/data/b.jsonl", 10), ("/data/c.txt", 5)),
            "input 3: None then, /data/c.txt (5 bytes) now",
        ),
        (settings((long, 7_697_251)), "input 2: /data/b.jsonl (10 bytes) then, None now"),
        (
            settings(("/data/b.jsonl", 10), (long, 7_697_251)),
            f"input 1: {long} (7,697,251 bytes) then, /data/b.jsonl (10 bytes) now",
        ),
        (dict(then, max_tokens=5000), "max_tokens: None then, 5000 now"),
        (dict(then, shard_size=900), "shard_size: 800 then, 900 now"),
        (dict(then, prefix="fineweb"), f"prefix: {PREFIX} then, fineweb now"),
        (
            dict(then, input=hub),
            f"input 1: {long} (7,697,251 bytes) then, HuggingFaceFW/fineweb-edu sample-10BT from "
            "the hub now",
        ),
        (then, None),
    ]
    for now, reason in cases:
        assert fineweb.settings_change(then, now) == reason


def test_file_given_twice_then_once_is_one_error_line(tmp_path, capsys):
    """--source a a, then --source a over the finished output: refused in one line that says the
    second input is gone (it once ended in a StopIteration traceback)."""
    src = write_jsonl(tmp_path / "a.jsonl", make_docs(40, 26))
    out = tmp_path / "out"
    r = run_main(capsys, "--source", src, src, "--local_dir", out, "--shard_size", 500)
    assert r.returncode == 0, r.stderr
    before = snapshot(out)
    r = run_main(capsys, "--source", src, "--local_dir", out, "--shard_size", 500)
    size = src.stat().st_size
    assert_one_line_error(r, f"different settings (input 2: {src} ({size:,} bytes) then, None now)")
    assert snapshot(out) == before


def test_manifest_without_max_token_still_works(tmp_path, enc, capsys):
    """Manifests from before max_token (same format v1) still resume and are still seen as finished;
    the shards written after the resume get the key."""
    texts = make_docs(40, 25)
    src = write_jsonl(tmp_path / "in.jsonl", texts)
    out = tmp_path / "out"
    args = ("--source", src, "--local_dir", out, "--shard_size", 500)
    assert run_main(capsys, *args).returncode == 0
    expected = reference_shards(enc, texts, 500)
    full = assert_shards(out, expected)
    assert full["format"] == "fineweb.py/manifest/v1"
    # what an older fineweb.py left after dying with two shards finished
    for s in full["shards"][2:]:
        (out / s["file"]).unlink()
    old = dict(
        full,
        shards=[{k: v for k, v in s.items() if k != "max_token"} for s in full["shards"][:2]],
        complete=False,
    )
    old.pop("totals")
    (out / "manifest.json").write_text(json.dumps(old))
    r = run_main(capsys, *args)
    assert r.returncode == 0 and "resuming" in r.stdout, r.stderr
    assert_shards(out, expected, old_entries=2)
    before = snapshot(out)
    r = run_main(capsys, *args)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert snapshot(out) == before


def test_bad_number_flag_is_usage_error(tmp_path):
    r = run_cli("--source", tmp_path, "--shard_size", "0")
    assert r.returncode == 2 and "Traceback" not in r.stderr  # argparse's usage error


def test_help_every_flag_explained_with_one_default():
    r = run_cli("--help", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    options = r.stdout.split("\noptions:\n", 1)[1]
    blocks = re.split(r"\n(?=  -)", options.rstrip("\n"))  # one block per flag: its line(s) of help
    flags = {}
    for block in blocks:
        first, *rest = block.splitlines()
        # the help starts after 2+ spaces, or on the next line
        spec, _, help_text = first.strip().partition("  ")
        help_text = " ".join([help_text.strip(), *(line.strip() for line in rest)]).strip()
        flags[spec.split()[0].rstrip(",")] = help_text
        assert help_text, f"{spec}: no help text"
        assert help_text.lower().count("default") <= 1, block
    assert set(flags) == {
        "-h",
        "--dataset",
        "--source",
        "--local_dir",
        "--shard_size",
        "--max_tokens",
        "--workers",
    }
    assert flags["--shard_size"].endswith("(default: 100000000)")
    assert flags["--dataset"].endswith("(default: edu-10BT)")
    assert re.search(r"\(default: \d+\)$", flags["--workers"])
    # no value when not given: the help says what happens instead
    for name in ("--local_dir", "--max_tokens"):
        assert "default" not in flags[name] and "without it" in flags[name]


# -----------------------------------------------------------------------------
# import hygiene


def test_import_is_cheap_and_side_effect_free(tmp_path):
    code = (
        "import sys; import fineweb; "
        "assert fineweb.get_encoding.cache_info().currsize == 0; "
        "assert not {'torch', 'datasets', 'tiktoken', 'pyarrow'} & set(sys.modules), "
        "sorted(sys.modules)"
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"),
    }
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert list(tmp_path.iterdir()) == []
