"""
End-to-end throughput of `fineweb.py --source` vs the anchor's approach (build-nanogpt fineweb.py:
multiprocessing Pool(os.cpu_count()//2).imap(tokenize, docs, chunksize=16) -> uint16 arrays ->
shards) on the same corpus and machine. Each contender is its own `python` subprocess (imports and
tokenizer loading count) writing into a fresh temp folder; the wall time around it is reported.
One JSON line per run, then one summary line per contender (min and median over --repeats).

    TIKTOKEN_CACHE_DIR=../shared/data/tiktoken_cache python benchmarks/bench_fineweb.py [CORPUS_DIR]

Contenders: anchor; ours (fineweb.py, a worker process per core); ours_w1 (--workers 1);
ours_threads (fineweb.py's pipeline with a thread pool). The headline figures are in
benchmarks/README.md. On the 2-core dev VM (14.66M tokens, all contenders byte-identical) ours
is CPU-bound (3.6 CPU-s: tokenizing 2.55, JSON 0.16, gunzip 0.24, tokenizer load 0.16) on 2 vCPUs
that give tiktoken ~1.8x parallel scaling, so ~1.9-2.0 s is close to the floor; the anchor is
bound by its single encoder process (~3.3 CPU-s). --workers 1 took 3.2-3.5 s; two encoder
threads 3.6-4.0 s at 6.7-7.5 CPU-s, which is why fineweb.make_executor uses processes.
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
# the anchor's approach, re-implemented for comparison (runs in a child process)

_anchor_enc = None


def anchor_tokenize(doc):
    """One document -> uint16 array [EOT] + encode_ordinary(text), the anchor's way (list ->
    array)."""
    import numpy as np
    global _anchor_enc
    if _anchor_enc is None:
        import tiktoken
        _anchor_enc = tiktoken.get_encoding("gpt2")
    tokens = [_anchor_enc._special_tokens["<|endoftext|>"]]
    tokens.extend(_anchor_enc.encode_ordinary(doc["text"]))
    tokens_np = np.array(tokens)
    assert (0 <= tokens_np).all() and (tokens_np < 2**16).all(), "token dictionary too large"
    return tokens_np.astype(np.uint16)


def read_docs(corpus_files):
    """The records one by one, as iterating the HF dataset yields them (a dict per document)."""
    for path in corpus_files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())


def anchor_run(corpus_files, out_dir, shard_size, prefix="edufineweb"):
    import multiprocessing as mp
    import numpy as np
    shard_index, token_count = 0, 0
    buf = np.empty((shard_size,), dtype=np.uint16)

    def save(n):
        split = "val" if shard_index == 0 else "train"
        np.save(os.path.join(out_dir, f"{prefix}_{split}_{shard_index:06d}"), buf[:n])

    with mp.Pool(max(1, os.cpu_count() // 2)) as pool:
        for tokens in pool.imap(anchor_tokenize, read_docs(corpus_files), chunksize=16):
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


def threads_run(corpus_dir, out_dir, shard_size, workers):
    """Our fineweb.py with a thread pool instead of its process pool."""
    from concurrent.futures import ThreadPoolExecutor
    sys.path.insert(0, str(REPO))
    import fineweb
    fineweb.make_executor = ThreadPoolExecutor  # the same pipeline, `workers` threads encoding
    sys.exit(fineweb.main(["--source", corpus_dir, "--local_dir", out_dir,
                           "--shard_size", str(shard_size), "--workers", str(workers)]))


# -----------------------------------------------------------------------------


def wait_for_quiet(threshold, max_wait):
    """This VM is shared: wait (at most max_wait s) until this fraction of all CPUs is idle
    (/proc/stat over half a second) before timing; -> the idle fraction (1.0 where unknown)."""
    def idle():
        def read():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            return v[3] + v[4], sum(v)  # idle + iowait, total
        try:
            (i0, t0), _, (i1, t1) = read(), time.sleep(0.5), read()
            return (i1 - i0) / max(t1 - t0, 1)
        except OSError:
            return 1.0
    deadline, fraction = time.time() + max_wait, idle()
    while fraction < threshold and time.time() < deadline:
        fraction = idle()
    return fraction


def tiktoken_alone(files):
    """Context: tokens/s of plain single-thread enc.encode_ordinary (reading excluded)."""
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    docs = [d["text"] for d in read_docs(files)]
    t0 = time.perf_counter()
    n = sum(len(enc.encode_ordinary(d)) + 1 for d in docs)
    dt = time.perf_counter() - t0
    return dict(contender="tiktoken_alone_1thread", seconds=round(dt, 3), tokens=n,
                tok_per_s=round(n / dt))


def main():
    import numpy as np
    p = argparse.ArgumentParser()
    p.add_argument("corpus", nargs="?", default=str(REPO.parent / "shared/data/corpus"))
    p.add_argument("--shard_size", type=int, default=int(2e6),
                   help="tokens per shard; less than the corpus (fineweb.py needs a train shard)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--contenders", default="anchor,ours,ours_w1,ours_threads")
    p.add_argument("--quiet", type=float, default=0.9,
                   help="wait until this fraction of CPU is idle before each run")
    p.add_argument("--max_wait", type=float, default=120, help="...but at most this many s")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)  # internal: one contender
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
    ours = [sys.executable, str(REPO / "fineweb.py"), "--source", args.corpus]
    this = [sys.executable, __file__, args.corpus, "--_child"]
    commands = {"anchor": this + ["anchor"], "ours": ours,  # default --workers: all cores
                "ours_w1": ours + ["--workers", "1"],
                "ours_threads": this + ["threads", "--_workers", str(os.cpu_count())]}
    names = args.contenders.split(",")
    times, reference = {n: [] for n in names}, None
    for rep in range(args.repeats):
        for name in names:  # interleaved, so slow phases of a noisy VM hit every contender alike
            with tempfile.TemporaryDirectory() as out:
                to = "--_out" if name in ("anchor", "ours_threads") else "--local_dir"
                cmd = commands[name] + ["--shard_size", str(args.shard_size), to, out]
                idle = wait_for_quiet(args.quiet, args.max_wait)
                r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                dt = time.perf_counter() - t0
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                shards = sorted(Path(out).glob("*.npy"))
                digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in shards}
                tokens = sum(len(np.load(p, mmap_mode="r")) for p in shards)
            reference = reference or digest
            times[name].append(dt)
            cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
            print(json.dumps(dict(contender=name, repeat=rep, seconds=round(dt, 3),
                                  cpu_seconds=round(cpu, 2), idle_before=round(idle, 2),
                                  tokens=tokens, tok_per_s=round(tokens / dt), shards=len(digest),
                                  same_bytes_as_first=digest == reference)), flush=True)
    for name in names:
        best, med = min(times[name]), statistics.median(times[name])
        line = dict(contender=name, summary=True, cpus=os.cpu_count(), tokens=tokens,
                    min_seconds=round(best, 3), median_seconds=round(med, 3),
                    tok_per_s_best=round(tokens / best), tok_per_s_median=round(tokens / med))
        if "anchor" in times and name != "anchor":
            line["speedup_vs_anchor_median"] = round(statistics.median(times["anchor"]) / med, 2)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
