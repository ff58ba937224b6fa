"""
One command for a short GPU window: trainer speed vs a plain reference step, a real-data training
run that is stopped with SIGTERM and resumed, and HellaSwag eval speed. Every part is a subprocess
with its own timeout; a failing part is recorded and the run goes on; a part that does not fit the
time left is skipped, and the summary says so.

How a GPU session runs it (device tool, one call):

    # here, on the CPU, once (writes ~25 MB: token shards, tiktoken's GPT-2 files, HellaSwag val)
    python benchmarks/gpu_check.py prepare --out .carry/gpu_check
    # the device call: carry [".carry"], timeout_s 600, command
    python benchmarks/gpu_check.py run --data .carry/gpu_check --out $OUT/gpu_check
    # afterwards, here: the folder to commit, benchmarks/results/<yyyymmdd>-<card>/
    python benchmarks/gpu_check.py unpack FILES_AT/gpu_check [--dest benchmarks/results/20260301-h100]

What comes back: the device machine returns at most 8 files, at most one folder below --out, names
of [A-Za-z0-9._-] only, each under 16 MiB, and which 8 of more is not defined. So --out only ever
holds four files, none in a folder:
  summary.md     the tables, the statuses, and the part running now (if the call is killed)
  results.jsonl  one object per part: status, seconds, the part's JSON result, the error
  env.json       torch, CUDA, card, nvidia-smi, git commit, python, the start time
  logs.tar.gz    every finished part's <part>.log (stdout+stderr, each cut to 512 KiB) and the
                 train run's train-resume/{log.txt,log_stopped.txt,config.json,samples.txt}
All four are rewritten after every part, each atomically (NAME.tmp, then a rename), so a call
killed at its limit still returns every part finished before. Part logs are written to a temp
folder while they run, checkpoints to another; neither is under --out. `unpack` copies the three
files and extracts the archive into the folder that is committed.

The default --budget_s 540 (9 minutes) covers everything, the environment probe included; leave
~60 s between it and the device call's own limit. `run --dry_run` prints the plan: order,
estimated seconds, which parts fit. `--parts matrix,hellaswag,train` (groups or part names) runs a
subset; `--smoke` runs the same code paths with a tiny model on the CPU in well under a minute
(`prepare --smoke` makes a smaller data folder for it). No network is needed: the subprocesses get
TIKTOKEN_CACHE_DIR and HELLASWAG_DIR pointing into --data, and HF_HUB_OFFLINE=1.

Parts, in priority order: gpt2 b16 + reference b16, train-resume, hellaswag, then gpt2 b64 +
reference b64, gpt2 b32, modern b16, modern b64. The estimates (GPU_ESTIMATES) assume a fresh
process compiles GPT-2 124M in ~70 s on an H100/H200; they are rescaled by how fast the finished
parts ran, so the later parts run when the card compiles faster than assumed and are skipped
otherwise.
  matrix     `train_gpt2.py --benchmark` side by side with benchmarks/bench_reference_step.py
             (build-nanogpt's loop around our model): tokens/s, MFU, step ms, peak GiB, compile s,
             and the ratio of each config to the reference at the same micro-batch.
  train      torchrun (1 process) on the carried shards: GPT-2 124M, 2 accumulation micro-steps,
             val / HellaSwag / samples / checkpoints; SIGTERM a few steps past the first checkpoint,
             then the same command + --resume to the end; the log is then checked (one train record
             per step, val/hella at the expected steps, finite values, a continuous loss curve
             across the resume, the log before the resume kept, the final checkpoint).
  hellaswag  benchmarks/bench_hellaswag.py on the full val set (reference loop vs batched).
Statuses: ok, failed, oom (CUDA out of memory: the trainer's `error: out of memory` line or an
uncaught OutOfMemoryError in the part's output; the plan goes on), skipped (see STATUS_MEANING).
Exit code 0 when at least one part ran ok and none failed (an oom is a finding about the card, not
a failure of the code).
"""

import argparse
import glob
import hashlib
import io
import itertools
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # CI and the dev box keep the offline data beside the repo
MANIFEST = "gpu_check_manifest.json"
TIKTOKEN_FILES = ("6d1cbeee0f20b3d9449abfede4726ed8212e3aee",  # vocab.bpe (name = sha1 of its URL)
                  "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")  # encoder.json
SOURCE_FILES = ("train_gpt2.py", "hellaswag.py", "fineweb.py", "benchmarks/bench_hellaswag.py",
                "benchmarks/bench_reference_step.py", "benchmarks/gpu_check.py")
MAX_CARRY_BYTES = 40 * 2**20

# -----------------------------------------------------------------------------
# 1. prepare: the folder the GPU call carries

# full: 1 val + 5 train shards of 1M tokens (the train run needs 80 x 32768 = 2.6M train tokens,
# so it never repeats data); smoke: a few hundred KB, enough for the tiny run.
DATA_SIZES = {"full": dict(shard_size=1_000_000, max_tokens=6_000_000, hellaswag_lines=None),
              "smoke": dict(shard_size=50_000, max_tokens=200_000, hellaswag_lines=64)}


class CheckError(Exception):
    """A problem the user must fix before anything runs: printed as one line, exit code 1."""


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_info():
    """Commit and changed tracked files of the tree, or {} where git does not work (the device
    machine gets a copy of the working tree that may have no .git)."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10)
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
        return {"commit": head.stdout.strip(), "dirty_files": [line[3:] for line in dirty]}
    except (OSError, subprocess.SubprocessError):
        return {}


def find_sources(shared):
    shared = Path(shared)
    sources = {"corpus": sorted((shared / "corpus").glob("*.jsonl.gz")),
               "tiktoken": [shared / "tiktoken_cache" / name for name in TIKTOKEN_FILES],
               "hellaswag": [shared / "hellaswag" / "hellaswag_val.jsonl"]}
    missing = [str(p) for paths in sources.values() for p in paths if not p.is_file()]
    if not sources["corpus"]:
        missing.append(str(shared / "corpus" / "*.jsonl.gz"))
    if missing:
        raise CheckError(f"missing sources: {', '.join(missing)} (pass --shared DIR)")
    # textbooks first: the val shard (shard 0) is then clean educational prose
    sources["corpus"].sort(key=lambda p: "openstax" not in p.name)
    return sources


def prepare(args):
    size = DATA_SIZES["smoke" if args.smoke else "full"]
    sources = find_sources(args.shared)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise CheckError(f"{out} exists and is not a gpu_check data folder; pick another --out")
        shutil.rmtree(out)  # ours: remade from scratch, so its manifest always describes it
    (out / "tiktoken_cache").mkdir(parents=True)
    (out / "hellaswag").mkdir()
    for src in sources["tiktoken"]:
        shutil.copyfile(src, out / "tiktoken_cache" / src.name)
    copy_hellaswag(sources["hellaswag"][0], out / "hellaswag" / "hellaswag_val.jsonl", size["hellaswag_lines"])

    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(out / "tiktoken_cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "fineweb.py", "--source", *map(str, sources["corpus"]), "--local_dir",
           str(out / "shards"), "--shard_size", str(size["shard_size"]), "--max_tokens", str(size["max_tokens"])]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"fineweb.py failed (exit {proc.returncode}): {tail_text(proc.stderr + proc.stdout, 3)}")

    files = [{"path": str(p.relative_to(out)), "bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(out.rglob("*")) if p.is_file()]
    total = sum(f["bytes"] for f in files)
    manifest = {"format": "gpu_check/data/v1", "smoke": bool(args.smoke),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_info(),
                "fineweb": {k: size[k] for k in ("shard_size", "max_tokens")},
                "sources": [str(p) for paths in sources.values() for p in paths],
                "shards": {split: len(list((out / "shards").glob(f"*_{split}_*.npy"))) for split in ("val", "train")},
                "total_bytes": total, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if total > MAX_CARRY_BYTES:
        raise CheckError(f"{out} holds {total / 2**20:.1f} MB, more than the {MAX_CARRY_BYTES // 2**20} MB a GPU call carries")
    print(f"prepared {out}: {manifest['shards']['val']} val + {manifest['shards']['train']} train shards of "
          f"{size['shard_size']:,} tokens, tiktoken cache, HellaSwag val; {len(files)} files, {total / 2**20:.1f} MB")


def copy_hellaswag(src, dst, lines):
    if lines is None:
        shutil.copyfile(src, dst)
        return
    with open(src, encoding="utf-8") as f, open(dst, "w", encoding="utf-8") as g:
        g.writelines(itertools.islice(f, lines))


def verify_data(data_dir, smoke=False):
    """None if data_dir holds what its manifest lists (sizes and hashes), else a one-line problem.
    A --smoke folder is too small for the GPU run (64 HellaSwag examples, 150k train tokens)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return f"no {MANIFEST} in {data_dir}; run `python benchmarks/gpu_check.py prepare --out {data_dir}`"
    manifest = json.loads(path.read_text())
    if manifest["smoke"] and not smoke:
        return f"{data_dir} was made by `prepare --smoke`; run prepare without --smoke for the GPU run"
    for f in manifest["files"]:
        p = Path(data_dir) / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            return f"{p} is missing or differs from {MANIFEST}; re-run prepare"
    return None


# -----------------------------------------------------------------------------
# 2. the plan: what runs, in which order, with which flags


@dataclass
class Profile:
    """Everything that differs between the GPU run and the CPU smoke run; the code paths don't."""
    device: str
    dtype: str
    compile: int
    model: list  # model-shape flags for the trainer and the reference (empty: GPT-2 124M)
    seq_len: int
    bench_steps: int  # steady state = the steps after the first third
    batches: tuple  # (small, mid, large) micro-batches; small and large are the headline pair
    hellaswag: list  # flags for bench_hellaswag.py
    train: dict  # trainer flags of the real-data run
    stop_after: int  # SIGTERM once a train record is this many steps past the first checkpoint
    estimates: dict  # seconds per part kind, and "env" for the probe, before anything is measured
    whole_matrix: bool = True  # False: one part per code path (the smoke run: CI's time is short)


# Seconds per part on an H100/H200, before anything is measured. Every part is a fresh process, so
# torch.compile dominates. ASSUMPTION: compiling GPT-2 124M (forward + backward) takes ~70 s in a
# fresh process (40-90 s is what an H100 shows; the earlier 40 s figure left the train run no time
# at all when the card was slower). The run rescales these by what the finished parts measured.
STARTUP_S = 15  # python + torch import, CUDA context, model init
COMPILE_S = 70
GPU_ESTIMATES = {
    "env": 15,  # the torch/CUDA probe and nvidia-smi, before the first part
    "ours": STARTUP_S + COMPILE_S + 5,  # + 24 steps, < 5 s even at micro-batch 64
    "reference": STARTUP_S + COMPILE_S + 5,  # the same model, the same compile
    # two processes: the first compiles the train and the eval graphs; the resumed one mostly hits
    # the inductor's on-disk cache; 80 steps of 32k tokens, 3 HellaSwag evals of 500 examples and
    # five 1.5 GB checkpoints add ~30 s
    "train": 2 * STARTUP_S + COMPILE_S + 40 + 35 + 30,
    # build-nanogpt's one-example loop over 10,042 examples (101 s on an H100), then the batched
    # evaluator: its compile and its pass
    "hellaswag": STARTUP_S + 100 + COMPILE_S + 15,
    # gpt2-xl has 4x the layers of 124M to compile, and 12x the FLOPs per token
    "xl": STARTUP_S + 3 * COMPILE_S + 30,
}

GPU = Profile(
    device="cuda", dtype="bf16", compile=1, model=[], seq_len=1024,
    bench_steps=24,  # 16 steady steps; 24 steps cost < 4 s even at micro-batch 64
    batches=(16, 32, 64),
    hellaswag=["--device", "cuda", "--compile", "1"],
    train=dict(micro_batch=16, total_batch=32768, max_steps=80, warmup_steps=10, checkpoint_every=20,
               val_every=20, val_tokens=65536, hellaswag_every=40, hellaswag_limit=500, sample_every=40,
               num_samples=2, sample_tokens=32),
    stop_after=2,
    estimates=GPU_ESTIMATES,
)

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64"]
SMOKE = Profile(
    device="cpu", dtype="fp32", compile=0, model=TINY + ["--block_size", "64"], seq_len=64,
    bench_steps=3, batches=(2, 4, 8),
    hellaswag=["--device", "cpu", "--compile", "0", "--limit", "16", *TINY],  # block 1024: long rows fit
    # 12 steps is the least the checks need (5 losses before the resume, 3 after, 10 in all);
    # the stop lands past the checkpoint at step 4, the resume around step 8
    train=dict(micro_batch=2, total_batch=256, max_steps=12, warmup_steps=2, checkpoint_every=4,
               val_every=4, val_tokens=1024, hellaswag_every=6, hellaswag_limit=8, sample_every=6,
               num_samples=1, sample_tokens=8),
    stop_after=2,
    estimates={"env": 2, "ours": 4, "reference": 4, "hellaswag": 8, "train": 25, "xl": 4},  # a loaded 2-core VM
    whole_matrix=False,  # the larger micro-batches run the very same code as the small one
)

GROUPS = ("matrix", "hellaswag", "train")


@dataclass
class Part:
    name: str
    group: str  # one of GROUPS
    kind: str  # key of Profile.estimates
    cmd: list
    needs_data: bool = False
    info: dict = field(default_factory=dict)  # what the summary shows even when the part did not run


def build_plan(p):
    py = sys.executable
    common = ["--device", p.device, "--dtype", p.dtype, "--compile", str(p.compile), "--seq_len", str(p.seq_len),
              "--steps", str(p.bench_steps), *p.model]

    def ours(arch, batch):
        cmd = [py, "train_gpt2.py", "--benchmark", "--arch", arch, "--micro_batch", str(batch), *common]
        return Part(f"matrix-{arch}-b{batch}", "matrix", "ours", cmd,
                    info=dict(impl="ours", arch=arch, micro_batch=batch))

    def reference(batch):
        cmd = [py, "benchmarks/bench_reference_step.py", "--micro_batch", str(batch), *common]
        return Part(f"reference-b{batch}", "matrix", "reference", cmd,
                    info=dict(impl="reference", arch="gpt2", micro_batch=batch))

    def xl(batch):  # does gpt2-xl with activation checkpointing fit one card, and how fast (smoke: tiny)
        cmd = [py, "train_gpt2.py", "--benchmark", "--model", "gpt2-xl", "--activation_checkpointing", "1",
               "--micro_batch", str(batch), *common]
        return Part(f"matrix-xl-ac-b{batch}", "matrix", "xl", cmd,
                    info=dict(impl="ours-xl", arch="gpt2-xl, activation checkpointing", micro_batch=batch))

    t = p.train
    train_cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt2.py",
                 "--arch", "gpt2", "--seq_len", str(p.seq_len), "--device", p.device, "--dtype", p.dtype,
                 "--compile", str(p.compile), *p.model, *[x for k, v in t.items() for x in (f"--{k}", str(v))]]
    small, mid, large = p.batches
    # priority order: what a short window must not miss comes first, since the budget skips from
    # the end: the headline speed pair, then a preempted run continuing exactly, then HellaSwag
    return [
        ours("gpt2", small), reference(small),
        Part("train-resume", "train", "train", train_cmd, needs_data=True,
             info=dict(t, stop_after=p.stop_after)),
        Part("hellaswag", "hellaswag", "hellaswag", [py, "benchmarks/bench_hellaswag.py", *p.hellaswag],
             needs_data=True),
        *([ours("gpt2", large), reference(large), ours("gpt2", mid)] if p.whole_matrix else []),
        ours("modern", small), *([ours("modern", large)] if p.whole_matrix else []), xl(small),
    ]


def select_parts(plan, parts_arg):
    if not parts_arg:
        return plan
    wanted = {w.strip() for w in parts_arg.split(",") if w.strip()}
    unknown = wanted - set(GROUPS) - {p.name for p in plan}
    if unknown:
        raise CheckError(f"--parts: unknown {', '.join(sorted(unknown))}; use groups {', '.join(GROUPS)} "
                         f"or part names {', '.join(p.name for p in plan)}")
    return [p for p in plan if p.group in wanted or p.name in wanted]


# -----------------------------------------------------------------------------
# 3. the output folder: four files, every one rewritten whole after each part

# The device machine returns at most 8 files, at most 2 folders below its $OUT, names of these
# characters only, each under 16 MiB; which 8 of more is not defined. Four files, no folder, keeps
# every plan well inside that, whatever parts it runs.
OUTPUT_FILES = ("summary.md", "results.jsonl", "env.json", "logs.tar.gz")
ARCHIVE = "logs.tar.gz"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
LOG_CAP_BYTES = 512 * 2**10  # per log in the archive: 13 of them cannot near 16 MiB, compressed or not


def temp_name(name):
    return f"{name}.tmp"  # a safe name itself, and a fixed one: the next run clears it if a kill left it


def write_atomic(path, data):
    """Write through NAME.tmp beside `path` and rename it: a reader, or a kill at any moment, finds
    the old file or the new one, never half of one. The temp never outlives a failed write."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_capped(path, cap=LOG_CAP_BYTES):
    """A log's bytes with its middle cut out past `cap`: the start (command, config) and the end
    (the error, the result line) are what a reader needs; a runaway log must not fill the archive."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            return f.read()
        head = f.read(cap // 4)
        f.seek(size - (cap - cap // 4))
        tail = f.read()
    return head + f"\n[gpu_check: {size - len(head) - len(tail):,} bytes cut here]\n".encode() + tail


def clear_out(out):
    """Make --out hold nothing but what this run writes: anything else there would count against
    the 8 files that come back. Our own files from an earlier run are removed; others refused."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ours = set(OUTPUT_FILES) | {temp_name(n) for n in OUTPUT_FILES}
    others = sorted(p.name for p in out.iterdir() if p.name not in ours or not p.is_file())
    if others:
        raise CheckError(f"{out} holds {', '.join(others[:5])}, not gpu_check's output; use an empty --out")
    for name in ours:
        (out / name).unlink(missing_ok=True)


class Outputs:
    """--out and the staging folder beside it: part logs and the train run's small files are
    written to the stage while they run (outside --out, so --out only ever holds whole files), and
    packed into logs.tar.gz after every part."""

    def __init__(self, out):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix="gpu_check_logs_"))

    def new_log(self, part):
        """The part's log file, empty (a part run again starts a fresh one)."""
        path = self.stage / f"{part.name}.log"
        path.write_text("")
        return path

    def keep_dir(self, part):
        path = self.stage / part.name
        path.mkdir(exist_ok=True)
        return path

    def write(self, name, text):
        write_atomic(self.out / name, text)

    def pack(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(p for p in self.stage.rglob("*") if p.is_file()):
                data = read_capped(path)
                info = tarfile.TarInfo(path.relative_to(self.stage).as_posix())
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        write_atomic(self.out / ARCHIVE, buf.getvalue())

    def close(self):
        shutil.rmtree(self.stage, ignore_errors=True)


def safe_member(name):
    """An archive member unpack may write: a relative path, at most one folder deep, safe names."""
    parts = name.split("/")
    return len(parts) <= 2 and all(SAFE_NAME.fullmatch(p) and p not in (".", "..") for p in parts)


def default_dest(env):
    """benchmarks/results/<yyyymmdd>-<card>/ from env.json: the run's start date and its card."""
    date = (env.get("started") or "")[:10].replace("-", "") or time.strftime("%Y%m%d")
    card = re.sub(r"[^a-z0-9]+", "-", str(env.get("card") or "unknown").lower()).strip("-")
    return REPO / "benchmarks" / "results" / f"{date}-{card}"


def unpack(args):
    """The returned folder -> the folder to commit: the three text files copied, the archive's
    logs extracted beside them (the archive itself is not kept: git diffs text)."""
    src = Path(args.src)
    if not (src / "summary.md").is_file():
        raise CheckError(f"{src} has no summary.md; pass the folder `run --out` wrote")
    env = json.loads((src / "env.json").read_text()) if (src / "env.json").is_file() else {}
    if not args.dest and not env.get("card"):
        raise CheckError(f"{src}/env.json names no card; pass --dest benchmarks/results/<yyyymmdd>-<card>")
    dest = Path(args.dest) if args.dest else default_dest(env)
    if dest.exists() and any(dest.iterdir()):
        raise CheckError(f"{dest} is not empty; pick another --dest")
    members = []
    if (src / ARCHIVE).is_file():
        with tarfile.open(src / ARCHIVE) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
            odd = [m.name for m in tar.getmembers() if not (m.isfile() or m.isdir()) or not safe_member(m.name)]
        if odd:
            raise CheckError(f"{src / ARCHIVE} holds unexpected entries: {', '.join(odd[:5])}")
    dest.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name != ARCHIVE and (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    for name, data in members:
        (dest / name).parent.mkdir(exist_ok=True)
        (dest / name).write_bytes(data)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    print(f"unpacked {src} into {dest}: {len(files)} files ({', '.join(files)})\ncommit it: git add {dest}")


# -----------------------------------------------------------------------------
# 4. running parts: subprocesses with timeouts, logs, the time budget


class Interrupted(Exception):
    """SIGTERM/SIGINT to this script: stop the current part, write the summary, exit."""


def child_env(data_dir):
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    data_dir = Path(data_dir).resolve()
    env.update(TIKTOKEN_CACHE_DIR=str(data_dir / "tiktoken_cache"), HELLASWAG_DIR=str(data_dir / "hellaswag"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def start(cmd, log, env):
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    # own process group, so a timeout can stop the whole tree (inductor compile workers included)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc, grace):
    """SIGTERM the process group, SIGKILL it after `grace` seconds. torchrun puts its workers in
    sessions of their own but forwards SIGTERM to them (and SIGKILLs them 30 s later), so give it
    a grace longer than that."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def wait(proc, timeout, grace):
    """-> (exit code, timed_out); the process is gone when this returns, whatever happens
    (an Interrupted raised while waiting stops it too)."""
    timed_out = False
    try:
        proc.wait(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        stop(proc, grace)
    return proc.returncode, timed_out


def run_logged(cmd, log_path, timeout, env, grace):
    with open(log_path, "a") as log:
        return wait(start(cmd, log, env), timeout, grace)


def tail_text(text, n=15, width=300):
    lines = [line[:width] for line in text.strip().splitlines()]
    return "\n".join(lines[-n:])


def last_json(text):
    """The last line of text that is a JSON object (the scripts print their result last)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# the trainer's and the reference step's one line (torchrun may prefix a worker's lines with its rank)
OOM_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(error: out of memory.*)$", re.M)
# an uncaught OutOfMemoryError (bench_hellaswag.py and older code), or one wrapped by torch.compile
OOM_TRACE = re.compile(r"^.*(?:OutOfMemoryError|CUDA out of memory).*$", re.M)


def oom_line(text):
    """The line of a part's output that says it ran out of CUDA memory, or None."""
    found = OOM_LINE.findall(text) or OOM_TRACE.findall(text)
    return found[-1].strip()[:300] if found else None


def failure(why, text):
    """-> (status, error) of a part that did not succeed: oom when its output says it ran out of
    memory (whatever the exit code: the OOM is the cause), else failed with the output's tail."""
    oom = oom_line(text)
    if oom:
        return "oom", f"{oom}\n({why})"
    return "failed", f"{why}\n{tail_text(text)}"


def command_outcome(rc, timed_out, timeout, text, result):
    """-> (status, error) of a part that prints one JSON result line and exits 0."""
    if rc == 0 and not timed_out and result is not None:
        return "ok", None
    if timed_out:
        why = f"timed out after {timeout:.0f} s"
    else:
        why = f"exit code {rc}" if rc != 0 else "exit code 0 but no JSON result line"
    return failure(why, text)


class Estimator:
    """Static estimates, scaled by how fast this machine turned out to be on the parts so far
    (most parts are dominated by the same thing, torch.compile), within 0.5x..1.5x.
    Only ok parts are observed: a failed or oom part stopped at a point nobody knows (an OOM at the
    first step skips the steps, a crash may skip the compile), so its seconds would make the card
    look faster than it is, and an estimate too low is the costly error: a part cut at the budget."""

    def __init__(self, estimates):
        self.estimates = estimates
        self.actual = self.expected = 0.0

    def factor(self):
        return min(1.5, max(0.5, self.actual / self.expected)) if self.expected else 1.0

    def __call__(self, part):
        return self.estimates[part.kind] * self.factor()

    def observe(self, part, seconds):
        self.actual += seconds
        self.expected += self.estimates[part.kind]


RESERVE_S = 10  # kept back from the budget for the summary


class Runner:
    def __init__(self, profile, data_dir, out, budget_s):
        self.profile, self.data_dir, self.budget_s = profile, Path(data_dir), budget_s
        self.t0 = time.monotonic()
        self.env = child_env(data_dir)
        self.estimate = Estimator(profile.estimates)
        self.outputs = Outputs(out)
        self.records = []
        self.env_info = {}
        self.running = None  # (part name, started at s, timeout s): the summary names it while it runs
        self.saving = self.stopping = False
        self.pending_signal = None
        self.summary_text = ""  # as last written to summary.md

    def elapsed(self):
        return time.monotonic() - self.t0

    def left(self):
        return self.budget_s - RESERVE_S - self.elapsed()

    def grace(self, part):
        return 40 if part.group == "train" else 10

    def close(self):
        self.outputs.close()

    def on_signal(self, signum, frame):
        """SIGTERM/SIGINT: stop the current part and wind down. Never in the middle of save() (the
        records and the files would disagree), and a second signal does not cut the wind-down."""
        if self.stopping:
            return
        if self.saving:
            self.pending_signal = signum
            return
        self.stopping = True
        raise Interrupted(f"signal {signum}")

    def run_all(self, plan, blocked=None):
        """blocked: {part name: reason} for parts that cannot run at all (no data, no GPU)."""
        blocked = blocked or {}
        for i, part in enumerate(plan):
            est = self.estimate(part)
            try:
                if part.name in blocked:
                    self.record(part, "skipped", reason=blocked[part.name])
                elif est > self.left():
                    self.record(part, "skipped", estimate_s=round(est),
                                reason=f"needs ~{est:.0f} s, {max(0, self.left()):.0f} s left of the {self.budget_s:.0f} s budget")
                else:
                    # generous per part (a slow card still finishes), but a hang cannot eat the whole
                    # budget; a kill's grace comes out of the slack between --budget_s and the call's limit
                    timeout = min(max(2.5 * est, est + 120), self.left())
                    # the log exists before the part is named running: a signal at any moment from
                    # here on finds it, and the archive holds the log of the part recorded failed
                    log_path = self.outputs.new_log(part)
                    self.running = (part.name, round(self.elapsed()), round(timeout))
                    self.save()  # a call killed during this part returns a summary that names it
                    run = self.run_train if part.group == "train" else self.run_command
                    rec = run(part, log_path, timeout)
                    if rec["status"] == "ok":
                        self.estimate.observe(part, rec["seconds"])
                    self.record(part, estimate_s=round(est), timeout_s=round(timeout), **rec)
            except Interrupted as e:
                self.record_interrupted(plan[i:], e)
                raise
            except Exception as e:  # a bug here must not cost the parts after it
                self.record(part, "failed", error=f"gpu_check.py: {type(e).__name__}: {e}")

    def record_interrupted(self, rest, e):
        done = {r["part"] for r in self.records}  # the signal may have come while a record was saved
        for part in rest:
            if part.name in done:
                continue
            if self.running and self.running[0] == part.name:
                self.record(part, "failed", error=f"gpu_check.py was interrupted ({e}) during this part")
            else:
                self.record(part, "skipped", reason=f"gpu_check.py was interrupted ({e})")

    def record(self, part, status=None, **fields):
        rec = {"part": part.name, "group": part.group, "status": status or fields.pop("status"),
               "config": part.info, "command": shlex.join(part.cmd), **fields}
        self.records.append(rec)
        self.running = None
        self.save()
        print(f"[gpu_check] {part.name}: {rec['status']}" + (f" ({rec['seconds']:.0f} s)" if "seconds" in rec else "")
              + (f" - {rec['reason']}" if rec.get("reason") else "")
              + (f" - {note(rec)}" if rec["status"] == "oom" else ""), flush=True)

    def save(self):
        """Rewrite all four files of --out: the archive first and the summary last, so the summary
        never names a part whose log is not in the archive yet."""
        self.saving = True
        try:
            self.outputs.pack()
            self.outputs.write("results.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
            self.outputs.write("env.json", json.dumps(self.env_info, indent=1) + "\n")
            self.summary_text = self.summary()
            self.outputs.write("summary.md", self.summary_text)
        finally:
            self.saving = False
        if self.pending_signal is not None and not self.stopping:
            signum, self.pending_signal, self.stopping = self.pending_signal, None, True
            raise Interrupted(f"signal {signum}")

    def summary(self):
        try:
            return summary_markdown(self.records, self.env_info, self.budget_s, self.elapsed(), self.running)
        except Exception as e:  # a bug in the tables must not stop the run or lose the statuses
            return "\n".join([f"# gpu_check: the summary failed ({type(e).__name__}: {e}); see results.jsonl", ""]
                             + [f"- {r['part']}: {r['status']} {note(r)}" for r in self.records]) + "\n"

    def run_command(self, part, log_path, timeout):
        t = time.monotonic()
        rc, timed_out = run_logged(part.cmd, log_path, timeout, self.env, self.grace(part))
        seconds = time.monotonic() - t
        text = log_path.read_text(errors="replace")
        result = last_json(text)
        status, error = command_outcome(rc, timed_out, timeout, text, result)
        return dict(status=status, seconds=round(seconds, 1), rc=rc, timed_out=timed_out,
                    result=result, error=error, log=log_path.name)

    # --- the real-data run: start, SIGTERM past a checkpoint, resume, check
    def run_train(self, part, log_path, timeout):
        spec = part.info
        deadline = time.monotonic() + timeout
        keep = self.outputs.keep_dir(part)  # the run's small files, packed into logs.tar.gz
        work = Path(tempfile.mkdtemp(prefix="gpu_check_train_"))  # checkpoints: GBs, never under --out
        log_dir = work / "log"
        cmd = part.cmd + ["--data_dir", str(self.data_dir.resolve() / "shards"), "--log_dir", str(log_dir)]
        t = time.monotonic()
        result = {"max_steps": spec["max_steps"]}
        try:
            stop_rc, why = self.run_until_stopped(cmd, log_path, log_dir, spec, deadline, part)
            result.update(stop_rc=stop_rc, phase1_s=round(time.monotonic() - t, 1))
            copy_if_exists(log_dir / "log.txt", keep / "log_stopped.txt")
            if why:
                return self.train_failed(why, t, result, log_path)
            ckpts = list_checkpoints(log_dir)
            result["resume_step"] = ckpts[-1] if ckpts else None
            t2 = time.monotonic()
            resume_rc, timed_out = run_logged(cmd + ["--resume"], log_path, deadline - time.monotonic(),
                                              self.env, self.grace(part))
            result.update(resume_rc=resume_rc, phase2_s=round(time.monotonic() - t2, 1))
            if timed_out or resume_rc != 0:
                why = "the resumed run " + ("timed out" if timed_out else f"failed with exit code {resume_rc}")
                return self.train_failed(why, t, result, log_path)
            result.update(analyse_train_run(log_dir, keep / "log_stopped.txt", spec, stop_rc, result["resume_step"]))
            bad = [name for name, c in result["checks"].items() if not c["ok"]]
            return dict(status="failed" if bad else "ok", seconds=round(time.monotonic() - t, 1), result=result,
                        error=f"checks failed: {', '.join(bad)}" if bad else None, log=log_path.name)
        finally:
            save_run_files(log_dir, keep)  # whatever happened, an interrupt included
            shutil.rmtree(work, ignore_errors=True)

    def run_until_stopped(self, cmd, log_path, log_dir, spec, deadline, part):
        """Phase 1: run until log.txt has a train record stop_after steps past the first checkpoint,
        then SIGTERM torchrun (as a preempted job gets). -> (exit code, None or why it failed)."""
        def past_checkpoint():
            ckpts = list_checkpoints(log_dir)
            return bool(ckpts) and last_train_step(log_dir / "log.txt") >= ckpts[0] + spec["stop_after"]

        with open(log_path, "a") as log:
            proc = start(cmd, log, self.env)
            try:
                while not past_checkpoint():
                    if proc.poll() is not None:
                        return proc.returncode, f"the first run ended (exit code {proc.returncode}) before it could be stopped"
                    if time.monotonic() > deadline:
                        return None, f"no checkpoint and a train record {spec['stop_after']} steps past it in time"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                rc, timed_out = wait(proc, min(120, deadline - time.monotonic()), self.grace(part))
                return rc, "the stopped run did not exit in time after SIGTERM" if timed_out else None
            finally:
                stop(proc, self.grace(part))

    def train_failed(self, why, t, result, log_path):
        status, error = failure(why, log_path.read_text(errors="replace"))
        return dict(status=status, seconds=round(time.monotonic() - t, 1), result=result, error=error,
                    log=log_path.name)


def copy_if_exists(src, dst):
    if Path(src).is_file():
        shutil.copyfile(src, dst)


def save_run_files(log_dir, keep):
    for name in ("log.txt", "config.json", "samples.txt"):
        copy_if_exists(log_dir / name, keep / name)


def list_checkpoints(log_dir):
    """Steps of the complete checkpoints (the trainer writes model_NNNNN.pt atomically)."""
    steps = [re.fullmatch(r"model_(\d+)\.pt", os.path.basename(p)) for p in glob.glob(os.path.join(log_dir, "model_*.pt"))]
    return sorted(int(m.group(1)) for m in steps if m)


# -----------------------------------------------------------------------------
# 4. checking the training log


def parse_log(text):
    """log.txt lines `{step} {name} {value}` -> [(step, name, value)]; a line still being
    written (or anything else unexpected) is skipped. Every record is kept, in file order: unlike
    results.write_training_params.parse_log (the later record of a step wins), so that
    check_schedule can see a step logged twice."""
    records = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            try:
                records.append((int(parts[0]), parts[1], float(parts[2])))
            except ValueError:
                continue
    return records


def last_train_step(log_path):
    try:
        steps = [s for s, name, _ in parse_log(Path(log_path).read_text()) if name == "train"]
    except OSError:
        return -1
    return max(steps, default=-1)


def due_steps(every, max_steps):
    """The steps where the trainer runs a periodic task: multiples of `every`, and the last step."""
    return set(range(0, max_steps + 1, every)) | {max_steps} if every > 0 else set()


def by_name(records, name):
    out = {}
    for step, n, value in records:
        if n == name:
            out.setdefault(step, []).append(value)
    return out


def check(ok, detail=""):
    return {"ok": bool(ok), "detail": detail}


def check_schedule(found, expected):
    counts = Counter({s: len(v) for s, v in found.items()})
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    twice = sorted(s for s, c in counts.items() if c > 1)
    return check(not (missing or extra or twice), f"missing {missing[:10]}, unexpected {extra[:10]}, "
                                                  f"logged twice {twice[:10]}" if (missing or extra or twice)
                 else f"{len(expected)} steps")


def continuity(train, resume_step, band=0.3):
    """The first 3 losses after the resume must not jump above the median of the 5 before it."""
    before = [train[s][0] for s in range(resume_step - 5, resume_step) if s in train]
    after = [train[s][0] for s in range(resume_step, resume_step + 3) if s in train]
    if not before or not after:
        return check(False, f"no losses around step {resume_step}")
    ref = statistics.median(before)
    return check(max(after) <= ref + band, f"after {[round(v, 3) for v in after]} vs median before {ref:.3f} (+{band})")


def analyse_train_run(log_dir, stopped_log, spec, stop_rc, resume_step):
    """The checks on the finished run, and the figures the summary reports."""
    records = parse_log((Path(log_dir) / "log.txt").read_text())
    stopped = parse_log(Path(stopped_log).read_text()) if Path(stopped_log).is_file() else []
    stopped_after = max((s for s, n, _ in stopped if n == "train"), default=None)
    checks = train_checks(records, stopped, spec, stop_rc, stopped_after, resume_step, list_checkpoints(log_dir))
    config_path = Path(log_dir) / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    return {"stopped_after_step": stopped_after, "checks": checks, "checks_passed": all(c["ok"] for c in checks.values()),
            **train_figures(records, spec["max_steps"], resume_step, config)}


def train_checks(records, stopped, spec, stop_rc, stopped_after, resume_step, checkpoints):
    max_steps, resume_step = spec["max_steps"], resume_step or 0
    train = by_name(records, "train")
    losses = [train[s][0] for s in sorted(train)]
    first, last = (statistics.median(losses[:5]), statistics.median(losses[-5:])) if len(losses) >= 10 else (0, 0)
    return {
        "stopped_with_checkpoint": check(
            stop_rc in (0, 1, 143) and stopped_after is not None and resume_step == stopped_after + 1,
            f"exit code {stop_rc} (torchrun exits 1 after forwarding SIGTERM), last train step {stopped_after}, "
            f"newest checkpoint {resume_step}"),
        "one_train_record_per_step": check_schedule(train, range(max_steps)),
        "val_at_expected_steps": check_schedule(by_name(records, "val"), due_steps(spec["val_every"], max_steps)),
        "hella_at_expected_steps": check_schedule(by_name(records, "hella"),
                                                  due_steps(spec["hellaswag_every"], max_steps)),
        "all_values_finite": check(all(math.isfinite(v) for _, _, v in records), f"{len(records)} values"),
        "log_before_resume_kept": check(
            [r for r in records if r[0] < resume_step] == [r for r in stopped if r[0] < resume_step],
            "the records of the steps before the resume are the stopped run's"),
        "loss_continuous_across_resume": continuity(train, resume_step),
        "final_checkpoint_exists": check(max_steps in checkpoints, f"model_{max_steps:05d}.pt"),
        "loss_decreased": check(last < first, f"median of the first 5 losses {first:.3f}, of the last 5 {last:.3f}"),
    }


def train_figures(records, max_steps, resume_step, config):
    def per_step(name):
        return {str(s): v[0] for s, v in sorted(by_name(records, name).items())}

    def steady(name, lo=0, hi=max_steps):  # the first step of each process includes the compile
        vals = [v[0] for s, v in by_name(records, name).items() if lo <= s < hi and s not in (0, resume_step)]
        return round(statistics.median(vals), 4) if vals else None

    losses = list(per_step("train").values())
    return {
        "train_loss": [round(v, 4) for v in losses], "train_loss_first50": [round(v, 4) for v in losses[:50]],
        "val_loss": per_step("val"), "hella": per_step("hella"), "hella_acc": per_step("hella_acc"),
        "tok_per_s_median": steady("tok/s"), "tok_per_s_median_before_stop": steady("tok/s", hi=resume_step or 0),
        "tok_per_s_median_after_resume": steady("tok/s", lo=resume_step or 0), "mfu_median": steady("mfu"),
        "gpu": config.get("device_name"), "torch": config.get("torch_version"),
        "total_batch": config.get("total_batch"), "grad_accum_steps": config.get("grad_accum_steps"),
        "compile": config.get("compile_resolved"), "dtype": config.get("dtype_resolved"),
    }


# -----------------------------------------------------------------------------
# 5. environment and summary

ENV_PROBE = r"""
import json, sys, torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "devices": []}
if torch.cuda.is_available():
    info["cudnn"] = torch.backends.cudnn.version()
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count})
print(json.dumps(info))
"""


def collect_env(env, data_dir):
    """torch/CUDA/card from a subprocess, so this process never creates a CUDA context of its own."""
    info = {"python_runner": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        proc = subprocess.run([sys.executable, "-c", ENV_PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=120)
        info.update(last_json(proc.stdout) or {"probe_error": tail_text(proc.stderr, 5)})
    except subprocess.TimeoutExpired:
        info["probe_error"] = "the torch probe timed out"
    info["card"] = info["devices"][0]["name"] if info.get("devices") else "cpu"
    if shutil.which("nvidia-smi"):
        for key, args in (("nvidia_smi_L", ["-L"]), ("nvidia_smi", [
                "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm", "--format=csv"])):
            try:
                info[key] = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30).stdout.strip()
            except (OSError, subprocess.SubprocessError) as e:
                info[key] = f"failed: {e}"
    info["git"] = git_info()
    manifest = Path(data_dir) / MANIFEST
    if manifest.is_file():  # where git does not work, this says which commit the data was made at
        prepared = json.loads(manifest.read_text())
        info["data_prepared_at"] = {k: prepared.get(k) for k in ("created", "git", "smoke")}
    info["sources_sha256"] = {f: sha256_file(REPO / f) for f in SOURCE_FILES if (REPO / f).is_file()}
    return info


def fmt(value, spec="", suffix=""):
    if value is None or value == "":
        return ""
    return f"{value:{spec}}{suffix}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def note(rec):
    text = rec.get("reason") or rec.get("error") or ""
    return text.splitlines()[0].replace("|", "/")[:160] if text else ""


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def matrix_rows(records, env):
    ref = {r["config"]["micro_batch"]: r["result"]["tokens_per_s"] for r in records
           if r["group"] == "matrix" and r["config"]["impl"] == "reference" and r["status"] == "ok"}
    rows = []
    # by micro-batch, so each config sits next to the reference it is compared with
    rank = {("ours", "gpt2"): 0, ("reference", "gpt2"): 1}  # then the modern arch
    order = lambda r: (r["config"]["micro_batch"], rank.get((r["config"]["impl"], r["config"]["arch"]), 2))
    for r in sorted((r for r in records if r["group"] == "matrix"), key=order):
        res, cfg = r.get("result") or {}, r["config"]
        ratio = ""
        if r["status"] == "ok" and cfg["impl"] == "ours" and cfg["micro_batch"] in ref:
            ratio = f"{res['tokens_per_s'] / ref[cfg['micro_batch']]:.3f}x"
        rows.append([r["part"], r["status"], cfg["impl"], cfg["arch"], cfg["micro_batch"],
                     fmt(res.get("tokens_per_s"), ",.0f"), ratio, fmt(res.get("mfu"), ".1%"), fmt(res.get("step_ms"), ".1f"),
                     fmt(res.get("peak_mem_gib"), ".2f"), fmt(res.get("compile_s"), ".1f"),
                     res.get("gpu", env.get("card", "")), res.get("torch", env.get("torch", "")),
                     fmt(r.get("seconds"), ".0f"), note(r)])
    return table(["part", "status", "impl", "arch", "micro-batch", "tokens/s", "vs reference", "MFU", "step ms",
                  "peak GiB", "compile s", "card", "torch", "seconds", "note"], rows)


def hellaswag_rows(records, env):
    rows = []
    for r in records:
        if r["group"] != "hellaswag":
            continue
        res = r.get("result") or {}
        ref, fast = res.get("reference", {}), res.get("batched", {})
        acc = f"{fmt(ref.get('acc_norm'), '.4f')} / {fmt(fast.get('acc_norm'), '.4f')}" if res else ""
        rows.append([r["part"], r["status"], res.get("examples", ""), res.get("dtype") or res.get("autocast", ""),
                     fmt(ref.get("seconds"), ".1f"), fmt(ref.get("examples_per_s"), ",.0f"), fmt(fast.get("seconds"), ".2f"),
                     fmt(fast.get("first_call_seconds"), ".1f"), fmt(res.get("speedup"), ".1f", "x"), acc,
                     res.get("predictions_differing", ""), res.get("device") or env.get("card", ""),
                     res.get("torch") or env.get("torch", ""),
                     fmt(r.get("seconds"), ".0f"), note(r)])
    return table(["part", "status", "examples", "dtype", "reference s", "reference ex/s", "batched s",
                  "batched first call s", "speedup", "acc_norm ref / batched", "predictions differing", "card", "torch",
                  "seconds", "note"], rows)


def train_rows(records, env):
    bench = {r["config"]["micro_batch"]: r["result"]["tokens_per_s"] for r in records if r["group"] == "matrix"
             and r["config"]["impl"] == "ours" and r["config"]["arch"] == "gpt2" and r["status"] == "ok"}
    rows, details = [], []
    for r in records:
        if r["group"] != "train":
            continue
        res = r.get("result") or {}
        checks = res.get("checks", {})
        passed = f"{sum(c['ok'] for c in checks.values())}/{len(checks)}" if checks else ""
        loss, val = res.get("train_loss") or [], list((res.get("val_loss") or {}).values())
        hella = list((res.get("hella") or {}).values())
        tok = fmt(res.get("tok_per_s_median"), ",.0f")
        mb = r["config"]["micro_batch"]
        if tok and mb in bench:
            tok += f" ({res['tok_per_s_median'] / bench[mb]:.2f}x matrix-gpt2-b{mb})"
        rows.append([r["part"], r["status"], r["config"]["max_steps"],
                     f"{fmt(res.get('stopped_after_step'))} / {fmt(res.get('resume_step'))}",
                     f"{fmt(res.get('stop_rc'))} / {fmt(res.get('resume_rc'))}", passed,
                     f"{loss[0]:.3f} -> {loss[-1]:.3f}" if loss else "", f"{val[0]:.3f} -> {val[-1]:.3f}" if val else "",
                     fmt(hella[-1], ".4f") if hella else "", tok, fmt(res.get("mfu_median"), ".1%"),
                     res.get("gpu") or env.get("card", ""), res.get("torch") or env.get("torch", ""),
                     fmt(r.get("seconds"), ".0f"), note(r)])
        for name, c in checks.items():
            details.append(f"- {'PASS' if c['ok'] else 'FAIL'} {name}: {c['detail']}")
        if loss:
            details.append(f"- train loss every 10 steps: {', '.join(f'{s}: {v:.3f}' for s, v in enumerate(loss) if s % 10 == 0)}")
            details.append(f"- val loss: {', '.join(f'{s}: {v:.3f}' for s, v in res['val_loss'].items())}")
            # the stopped and the resumed process compile separately: a gap between them is a finding
            details.append(f"- median tok/s before the stop {fmt(res.get('tok_per_s_median_before_stop'), ',.0f')}, "
                           f"after the resume {fmt(res.get('tok_per_s_median_after_resume'), ',.0f')}")
    header = ["part", "status", "steps", "stopped after / resumed at", "stop rc / resume rc", "checks", "train loss",
              "val loss", "hella (last)", "median tok/s", "MFU", "card", "torch", "seconds", "note"]
    return table(header, rows) + ([""] + details if details else [])


STATUS_MEANING = {
    "ok": "ran to the end; its figures are in the tables and results.jsonl",
    "failed": "an exit code, a timeout, no result line or a failed train check: see the note, and the "
              "part's log in logs.tar.gz",
    "oom": "CUDA out of memory (the card is too small for this micro-batch); the plan went on",
    "skipped": "did not run: it did not fit the time left, needs data or CUDA that is missing, or "
               "gpu_check.py was interrupted",
}


def summary_markdown(records, env, budget_s, elapsed, running=None):
    counts = Counter(r["status"] for r in records)
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    if not commit:  # no git on the device: the commit the carried data was prepared at
        prepared = ((env.get("data_prepared_at") or {}).get("git") or {}).get("commit")
        commit = f"{prepared[:12]} (data prepared at)" if prepared else "?"
    head = [f"# gpu_check: {env.get('card', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}",
            "", f"{time.strftime('%Y-%m-%d %H:%M %Z')}; commit {commit}; "
            f"budget {budget_s:.0f} s, used {elapsed:.0f} s; "
            + ", ".join(f"{counts[s]} {s}" for s in STATUS_MEANING), ""]
    if running:
        name, since, timeout = running
        head += [f"**Running now: {name}** (started at {since} s, timeout {timeout} s). A summary that still "
                 "says so is from a call that ended during this part; its log in logs.tar.gz is still empty "
                 "(a log is packed when its part ends).", ""]
    sections = [("matrix", "Trainer speed: `train_gpt2.py --benchmark` vs the plain reference step", matrix_rows),
                ("train", "Real-data run stopped with SIGTERM and resumed (torchrun, 1 process)", train_rows),
                ("hellaswag", "HellaSwag: one-example reference loop vs batched evaluator", hellaswag_rows)]
    body = []
    for group, title, rows in sections:
        if any(r["group"] == group for r in records):  # a --parts subset leaves the others out
            body += [f"## {title}", ""] + rows(records, env) + [""]
    not_ok = [f"- {r['part']} ({r['status']}): {note(r)}" for r in records if r["status"] != "ok"]
    if not_ok:
        body += ["## Not ok", ""] + not_ok + [""]
    body += ["## Statuses and files", ""] + [f"- **{s}**: {meaning}" for s, meaning in STATUS_MEANING.items()]
    body += ["- files: summary.md, results.jsonl (one object per part), env.json, logs.tar.gz (each part's "
             "`<part>.log` and `train-resume/`); `python benchmarks/gpu_check.py unpack DIR` writes the folder "
             "to commit", ""]
    return "\n".join(head + body)


# -----------------------------------------------------------------------------
# 6. command line


def run(args):
    profile = SMOKE if args.smoke else GPU
    plan = select_parts(build_plan(profile), args.parts)
    data_problem = verify_data(args.data, args.smoke)
    if args.dry_run:
        return dry_run(plan, profile, args, data_problem)
    if not args.out:
        raise CheckError("run: --out is required (except with --dry_run)")
    clear_out(args.out)
    runner = Runner(profile, args.data, args.out, args.budget_s)
    runner.env_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    signal.signal(signal.SIGTERM, runner.on_signal)
    signal.signal(signal.SIGINT, runner.on_signal)
    try:
        runner.save()  # the four files exist from the start: a call killed in the probe still says so
        runner.env_info.update(collect_env(runner.env, args.data), data_problem=data_problem)
        print(f"[gpu_check] {runner.env_info['card']}, torch {runner.env_info.get('torch')}, "
              f"{len(plan)} parts, budget {args.budget_s:.0f} s", flush=True)
        blocked = {}
        if data_problem:
            blocked.update({p.name: data_problem for p in plan if p.needs_data})
        if profile.device == "cuda" and not runner.env_info.get("cuda_available"):
            blocked.update({p.name: "torch sees no CUDA device (see env.json); use --smoke on a CPU" for p in plan})
        runner.run_all(plan, blocked)
    except Interrupted:
        pass
    runner.stopping = True  # from here on a signal waits: the last save is a second away
    runner.save()
    runner.close()
    print(runner.summary_text)
    return exit_code(runner.records)


def exit_code(records):
    """0 when a part ran ok and none failed: a skip or an OOM is a finding about the window or the
    card, not a fault of the code; a run where nothing ran ok is not a result."""
    statuses = {r["status"] for r in records}
    return 0 if "ok" in statuses and "failed" not in statuses else 1


def dry_run(plan, profile, args, data_problem):
    """The plan as the run would start it: order, estimate, when each part would start, whether
    it fits. The run rescales the estimates by the parts it has finished, so later lines move."""
    est, at = Estimator(profile.estimates), float(profile.estimates["env"])
    limit = args.budget_s - RESERVE_S
    print(f"plan ({'smoke, CPU' if args.smoke else 'GPU'}): budget {args.budget_s:.0f} s, {limit:.0f} s for the "
          f"parts after {RESERVE_S} s kept for the summary; data: {data_problem or 'ok'}")
    if not args.smoke:
        print(f"estimates assume a fresh process starts in ~{STARTUP_S} s and compiles GPT-2 124M in ~{COMPILE_S} s "
              f"(an H100 takes 40-90 s); during the run they are rescaled 0.5x-1.5x by the finished ok parts")
    print(f" 0. {'env probe':20s} ~{profile.estimates['env']:4.0f} s  starts at    0 s")
    skipped = []
    for i, part in enumerate(plan, 1):
        e = est(part)
        fits = at + e <= limit
        print(f"{i:2d}. {part.name:20s} ~{e:4.0f} s  " + (f"starts at {at:4.0f} s" if fits else "SKIPPED (over budget)")
              + f"  {shlex.join(part.cmd[1:])}")
        if fits:
            at += e
        else:
            skipped.append(part.name)
    print(f"estimated total: {at:.0f} s of {limit:.0f} s; "
          + (f"skipped unless the first parts run faster than estimated: {', '.join(skipped)}" if skipped
             else "every part fits"))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="GPU check: prepare the carried data here, run it on the GPU.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make the data folder a GPU call carries (runs on the CPU)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--smoke", action="store_true", help="a smaller folder, for run --smoke")
    prep.add_argument("--shared", default=str(SHARED_DATA), help="the offline data (corpus/, tiktoken_cache/, hellaswag/)")
    r = sub.add_parser("run", help="run the parts; write summary.md, results.jsonl, env.json, logs.tar.gz into --out")
    r.add_argument("--data", default=str(REPO / ".carry" / "gpu_check"))
    r.add_argument("--out", default=None, help="an empty or new folder (or one a previous run wrote)")
    r.add_argument("--budget_s", type=float, default=540, help="wall-clock seconds for everything")
    r.add_argument("--smoke", action="store_true", help="tiny model on the CPU: the same code paths in < 1 min")
    r.add_argument("--parts", default=None, help="comma-separated groups (matrix, hellaswag, train) or part names")
    r.add_argument("--dry_run", action="store_true", help="print the plan (order, estimated seconds) and exit")
    u = sub.add_parser("unpack", help="the folder a run returned -> the folder to commit, logs extracted")
    u.add_argument("src", help="the returned folder (run's --out)")
    u.add_argument("--dest", default=None, help="default: benchmarks/results/<yyyymmdd>-<card> from env.json")
    args = p.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args)
            return 0
        if args.command == "unpack":
            unpack(args)
            return 0
        return run(args)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
