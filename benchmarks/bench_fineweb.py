"""
End-to-end throughput of `fineweb.py --source` vs the anchor's approach (build-nanogpt fineweb.py:
multiprocessing Pool(os.cpu_count()//2).imap(tokenize, docs, chunksize=16) -> uint16 arrays -> shards),
on the same corpus, same machine. Each contender runs as its own `python` subprocess (so imports and
tokenizer loading count) into a fresh temp folder; wall time around the subprocess is reported.
Prints one JSON line per run and a summary line per contender (min and median over --repeats).

    TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python benchmarks/bench_fineweb.py [CORPUS_DIR]

Measured on the 2-core dev VM (Python 3.11, tiktoken 0.14, numpy 2.4), 14,664,986 tokens / 6,882 docs,
--shard_size 1e8, 5 interleaved repeats each, every run started on an idle machine (the VM is shared,
so only quiet-machine numbers are meaningful); all contenders wrote byte-identical shards:

    contender                            median wall   tok/s (median)   CPU-s   vs anchor
    anchor (Pool(1).imap, chunksize=16)     3.81 s          3.85M         4.4     1.00x
    ours   (fineweb.py, 2 worker procs)     1.97 s          7.46M         3.6     1.94x
    ours   --workers 1 (1 worker proc)      3.21 s          4.57M         3.6     1.19x
    ours with 2 encoder THREADS             3.62 s          4.05M         6.7     1.05x
    tiktoken alone, 1 thread, no I/O        2.61 s          5.62M           -       -

Those runs used --shard_size 1e8 (the whole corpus in one shard). fineweb.py now refuses an input
that fits in the val shard (no train shard), so the default here is 2e6 (val + 7 train shards, the
same for every contender). Re-measured so, after fineweb.py's rewrite to 641 lines (same VM, shared,
3 interleaved repeats, --max_wait 20, all byte-identical): anchor 4.15 s, ours 2.16 s (1.92x),
--workers 1 3.46 s, 2 threads 3.99 s (7.5 CPU-s vs 3.8).

Across four such runs the ratio was 1.94x-2.00x (anchor 3.81-4.12 s, ours 1.94-2.06 s). The anchor is
much faster here than the ~13 s once noted for this machine, so the ratio is ~2x rather than more:
ours is CPU-bound (3.6 CPU-s: tokenizing 2.55, JSON parsing 0.16, gunzip 0.24, tokenizer load 0.16,
the rest startup/IPC/writing) on 2 vCPUs that give tiktoken ~1.8x parallel scaling, so ~1.9-2.0 s is
close to the floor for this work; the anchor is bound by its single encoder process (~3.3 CPU-s).
Threads lose to processes here: see fineweb.make_executor.
"""

import argparse
import gzip
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# -----------------------------------------------------------------------------
# the anchor's approach, re-implemented here for comparison (runs in a child process)

_anchor_enc = None


def anchor_tokenize(doc):
    """One document -> uint16 array [EOT] + encode_ordinary(text), built the anchor's way (list -> array)."""
    import numpy as np
    global _anchor_enc
    if _anchor_enc is None:
        import tiktoken
        _anchor_enc = tiktoken.get_encoding("gpt2")
    tokens = [_anchor_enc._special_tokens["<|endoftext|>"]]
    tokens.extend(_anchor_enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large for uint16"
    return tokens_np.astype(np.uint16)


def anchor_docs(corpus_files):
    """Stream the records like iterating the HF dataset does (a dict per document)."""
    for path in corpus_files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


def anchor_run(corpus_files, out_dir, shard_size, prefix="edufineweb"):
    import multiprocessing as mp
    import numpy as np
    nprocs = max(1, os.cpu_count() // 2)
    shard_index, token_count = 0, 0
    buf = np.empty((shard_size,), dtype=np.uint16)

    def save(n):
        split = "val" if shard_index == 0 else "train"
        np.save(os.path.join(out_dir, f"{prefix}_{split}_{shard_index:06d}"), buf[:n])

    with mp.Pool(nprocs) as pool:
        for tokens in pool.imap(anchor_tokenize, anchor_docs(corpus_files), chunksize=16):
            if token_count + len(tokens) < shard_size:
                buf[token_count:token_count + len(tokens)] = tokens
                token_count += len(tokens)
            else:  # fill the shard, write it, carry the rest of the document over
                remainder = shard_size - token_count
                buf[token_count:token_count + remainder] = tokens[:remainder]
                save(shard_size)
                shard_index += 1
                buf[0:len(tokens) - remainder] = tokens[remainder:]
                token_count = len(tokens) - remainder
        if token_count:
            save(token_count)


# -----------------------------------------------------------------------------
# our fineweb.py with a thread pool instead of its process pool (the thread-vs-process measurement)


def threads_run(corpus_dir, out_dir, shard_size, workers):
    from concurrent.futures import ThreadPoolExecutor
    sys.path.insert(0, str(REPO))
    import fineweb
    fineweb.make_executor = ThreadPoolExecutor  # the same pipeline, `workers` threads encoding
    sys.exit(fineweb.main(["--source", corpus_dir, "--local_dir", out_dir, "--shard_size", str(shard_size),
                           "--workers", str(workers)]))


# -----------------------------------------------------------------------------


def cpu_idle(seconds=0.5):
    """Fraction of all CPUs idle over `seconds` (/proc/stat); 1.0 where unavailable."""
    def read():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)  # idle + iowait, total
    try:
        i0, t0 = read()
        time.sleep(seconds)
        i1, t1 = read()
        return (i1 - i0) / max(t1 - t0, 1)
    except OSError:
        return 1.0


def wait_for_quiet(threshold, max_wait):
    """This VM is shared with other jobs: wait (bounded) until the CPUs are mostly idle before timing."""
    deadline = time.time() + max_wait
    idle = cpu_idle()
    while idle < threshold and time.time() < deadline:
        idle = cpu_idle()
    return idle


def tiktoken_alone(files):
    """Context: tokens/s of plain single-thread enc.encode_ordinary over the corpus (reading excluded)."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    docs = [json.loads(line)["text"] for path in files for line in gzip.open(path, "rb") if line.strip()]
    t0 = time.perf_counter()
    n = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    dt = time.perf_counter() - t0
    return dict(contender="tiktoken_alone_1thread", seconds=round(dt, 3), tokens=n, tok_per_s=round(n / dt))


def digest_dir(d):
    """sha256 of every shard (name -> hash), to check that all contenders wrote the same bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(d).glob("*.npy"))}


def count_tokens(d):
    import numpy as np
    return sum(len(np.load(p, mmap_mode="r")) for p in Path(d).glob("*.npy"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("corpus", nargs="?", default=str(REPO.parent / "shared/data/corpus"))
    p.add_argument("--shard_size", type=int, default=int(2e6),
                   help="tokens per shard; must be less than the corpus (fineweb.py needs a train shard)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contenders", default="anchor,ours,ours_w1,ours_threads")
    p.add_argument("--quiet", type=float, default=0.9, help="wait until this fraction of CPU is idle before each run")
    p.add_argument("--max_wait", type=float, default=120, help="...but at most this many seconds")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)  # internal: run one contender
    p.add_argument("--_out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_workers", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    files = sorted(str(f) for f in Path(args.corpus).rglob("*.jsonl.gz"))
    if args._child == "anchor":
        return anchor_run(files, args._out, args.shard_size)
    if args._child == "threads":
        return threads_run(args.corpus, args._out, args.shard_size, args._workers)
    if not files:
        sys.exit(f"error: no .jsonl.gz files under {args.corpus}")
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared/data/tiktoken_cache"))

    wait_for_quiet(args.quiet, args.max_wait)
    print(json.dumps(tiktoken_alone(files)), flush=True)
    ncpu = os.cpu_count()
    commands = {
        "anchor": [sys.executable, __file__, args.corpus, "--_child", "anchor"],
        "ours": [sys.executable, str(REPO / "fineweb.py"), "--source", args.corpus],  # default --workers = all cores
        "ours_w1": [sys.executable, str(REPO / "fineweb.py"), "--source", args.corpus, "--workers", "1"],
        "ours_threads": [sys.executable, __file__, args.corpus, "--_child", "threads", "--_workers", str(ncpu)],
    }
    names = args.contenders.split(",")
    times = {n: [] for n in names}
    reference = None
    for rep in range(args.repeats):
        for name in names:  # interleaved, so slow phases of a noisy VM hit every contender alike
            with tempfile.TemporaryDirectory() as out:
                cmd = commands[name] + ["--shard_size", str(args.shard_size)]
                cmd += ["--_out", out] if name in ("anchor", "ours_threads") else ["--local_dir", out]
                idle = wait_for_quiet(args.quiet, args.max_wait)
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
                digest = digest_dir(out)
                tokens = count_tokens(out)
            reference = reference or digest
            times[name].append(dt)
            print(json.dumps(dict(contender=name, repeat=rep, seconds=round(dt, 3), cpu_seconds=round(cpu, 2),
                                  idle_before=round(idle, 2), tokens=tokens,
                                  tok_per_s=round(tokens / dt), shards=len(digest), same_bytes_as_first=digest == reference)),
                  flush=True)
    for name in names:
        best, med = min(times[name]), statistics.median(times[name])
        line = dict(contender=name, summary=True, cpus=ncpu, tokens=tokens, min_seconds=round(best, 3),
                    median_seconds=round(med, 3), tok_per_s_best=round(tokens / best), tok_per_s_median=round(tokens / med))
        if "anchor" in times and name != "anchor":
            line["speedup_vs_anchor_median"] = round(statistics.median(times["anchor"]) / med, 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
