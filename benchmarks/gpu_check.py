"""
One command for a short GPU window. Two plans, each its own device call of at most 9 minutes:

  check    trainer speed vs a plain reference step, a real-data run stopped with SIGTERM and
           resumed, HellaSwag eval speed, gpt2-xl with activation checkpointing;
  compare  gpt2, the fast recipe, modern + Muon and modern at equal tokens on the real-text corpus
           (benchmarks/compare.py): tokens and seconds each needs to reach the gpt2 run's val loss.

    python benchmarks/gpu_check.py prepare --out .carry/gpu_check        # here, on the CPU, once
    python benchmarks/gpu_check.py run --data .carry/gpu_check --out $OUT/gpu_check [--plan compare]
    python benchmarks/gpu_check.py unpack FILES_AT/gpu_check          # here: the folder to commit

The device call: carry [".carry"], timeout_s 600. Every part is a subprocess with its own timeout;
a failing part is recorded and the run goes on. The budget (--budget_s 540) does NOT cover the
whole check plan: at the assumed compile time (~70 s a process, COMPILE_S) it fits the headline
pair and train-resume and then what the measured speed allows; each part that does not fit is
skipped for time, and the summary names it with the `--parts` command for the next call. The two
parts of a matrix pair (ours and the reference at one micro-batch) start only together, and the
summary names every pair that is missing and why. `run --dry_run` prints the plan; `--smoke` runs
the same code paths tiny on the CPU (after `prepare --smoke`), and its summary says so.

What comes back is at most 8 files, at most 2 folders deep, names of [A-Za-z0-9._-], each under
16 MiB; so --out only ever holds summary.md, results.jsonl, env.json and logs.tar.gz (every
part's log, the runs' log.txt and config.json), each rewritten whole after every part: a call
killed at its limit returns all that finished before. benchmarks/README.md has the rest.
"""

import argparse
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
sys.path.insert(0, str(REPO))
import train_gpt2  # noqa: E402  (its log reader, checkpoint list and atomic writer)
from benchmarks import compare  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"  # CI and the dev box keep the offline data here
MANIFEST = "gpu_check_manifest.json"
TIKTOKEN_FILES = ("6d1cbeee0f20b3d9449abfede4726ed8212e3aee",  # vocab.bpe (sha1 of its URL)
                  "6c7ea1a7e38e3a7f062df639a5b80947f075ffe6")  # encoder.json
SOURCE_FILES = ("train_gpt2.py", "hellaswag.py", "fineweb.py", "benchmarks/bench_hellaswag.py",
                "benchmarks/bench_reference_step.py", "benchmarks/gpu_check.py",
                "benchmarks/compare.py")
MAX_CARRY_BYTES = 40 * 2**20


class CheckError(Exception):
    """A problem the user must fix before anything runs: printed as one line, exit code 1."""


# -----------------------------------------------------------------------------
# 1. prepare: the folder the GPU call carries

# full: 1 val + 9 train shards of 1M tokens: train-resume reads 80 x 32768 = 2.6M train tokens,
# each compare variant 200 x 32768 = 6.6M, so neither sees a token twice. smoke: a few hundred KB.
DATA_SIZES = {"full": dict(shard_size=1_000_000, max_tokens=10_000_000, hellaswag_lines=None),
              "smoke": dict(shard_size=50_000, max_tokens=200_000, hellaswag_lines=64)}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git_info():
    """Commit and changed tracked files, or {} where git does not work (the device machine gets
    a copy of the working tree that may have no .git)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {}
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.splitlines()
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
    # textbooks first: the val shard (shard 0), the held-out set, is then clean educational prose
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
    with open(sources["hellaswag"][0]) as f, open(out / "hellaswag" / "hellaswag_val.jsonl",
                                                   "w") as g:
        g.writelines(itertools.islice(f, size["hellaswag_lines"]))  # None: all of it
    env = dict(os.environ, TIKTOKEN_CACHE_DIR=str(out / "tiktoken_cache"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "fineweb.py", "--source", *map(str, sources["corpus"]), "--local_dir",
           str(out / "shards"), "--shard_size", str(size["shard_size"]),
           "--max_tokens", str(size["max_tokens"])]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckError(f"fineweb.py failed (exit {proc.returncode}): "
                         f"{tail_text(proc.stderr + proc.stdout, 3)}")
    files = [{"path": str(p.relative_to(out)), "bytes": p.stat().st_size,
              "sha256": sha256_file(p)} for p in sorted(out.rglob("*")) if p.is_file()]
    total = sum(f["bytes"] for f in files)
    shards = {split: len(list((out / "shards").glob(f"*_{split}_*.npy")))
              for split in ("val", "train")}
    manifest = {"format": "gpu_check/data/v1", "smoke": bool(args.smoke),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git": git_info(),
                "fineweb": {k: size[k] for k in ("shard_size", "max_tokens")},
                "sources": [str(p) for paths in sources.values() for p in paths],
                "shards": shards, "total_bytes": total, "files": files}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if total > MAX_CARRY_BYTES:
        raise CheckError(f"{out} holds {total / 2**20:.1f} MB, more than the "
                         f"{MAX_CARRY_BYTES // 2**20} MB a GPU call carries")
    print(f"prepared {out}: {shards['val']} val + {shards['train']} train shards of "
          f"{size['shard_size']:,} tokens, tiktoken cache, HellaSwag val; {len(files)} files, "
          f"{total / 2**20:.1f} MB")


def verify_data(data_dir, smoke=False):
    """None if data_dir holds what its manifest lists (sizes and hashes), else a one-line problem.
    A --smoke folder is too small for the GPU run (64 HellaSwag examples, 150k train tokens)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        return (f"no {MANIFEST} in {data_dir}; "
                f"run `python benchmarks/gpu_check.py prepare --out {data_dir}`")
    manifest = json.loads(path.read_text())
    if manifest["smoke"] and not smoke:
        return f"{data_dir} was made by `prepare --smoke`; run prepare without --smoke for the GPU"
    for f in manifest["files"]:
        p = Path(data_dir) / f["path"]
        if not p.is_file() or p.stat().st_size != f["bytes"] or sha256_file(p) != f["sha256"]:
            return f"{p} is missing or differs from {MANIFEST}; re-run prepare"
    return None


# -----------------------------------------------------------------------------
# 2. the plans: what runs, in which order, with which flags


@dataclass
class Profile:
    """Everything that differs between the GPU run and the CPU smoke run; the code paths don't."""
    device: str
    dtype: str
    compile: int
    model: list  # model-shape flags for the trainer and the reference (empty: GPT-2 124M)
    seq_len: int
    bench_steps: int  # steady state = the steps after the first third
    batches: tuple  # (small, mid, large) micro-batches; small and large have reference pairs
    hellaswag: list  # flags for bench_hellaswag.py
    train: dict  # trainer flags of the real-data run
    stop_after: int  # SIGTERM once a train record is this many steps past the first checkpoint
    compare: dict  # trainer flags every compare variant shares
    estimates: dict  # seconds per part kind, and "env" for the probe, before anything is measured
    whole_matrix: bool = True  # False: one part per code path (the smoke run: CI's time is short)


# Seconds per part on an H100/H200 before anything is measured. Every part is a fresh process, so
# torch.compile dominates. ASSUMPTION: compiling GPT-2 124M (forward + backward) takes ~70 s in a
# fresh process (40-90 s is what an H100 shows). The run rescales these by what finished parts took.
STARTUP_S = 15  # python + torch import, CUDA context, model init
COMPILE_S = 70
GPU_ESTIMATES = {
    "env": 15,  # the torch/CUDA probe and nvidia-smi, before the first part
    "ours": STARTUP_S + COMPILE_S + 5,  # + 24 steps, < 5 s even at micro-batch 64
    "reference": STARTUP_S + COMPILE_S + 5,  # the same model, the same compile
    # two processes; the resumed one mostly hits the inductor's on-disk cache; 80 steps of 32k
    # tokens, 3 HellaSwag evals of 500 examples and five 1.5 GB checkpoints add ~30 s
    "train": 2 * STARTUP_S + COMPILE_S + 40 + 35 + 30,
    # build-nanogpt's one-example loop over 10,042 examples (101 s on an H100), then the batched
    # evaluator: its compile and its pass
    "hellaswag": STARTUP_S + 100 + COMPILE_S + 15,
    "xl": STARTUP_S + 3 * COMPILE_S + 30,  # 4x the layers of 124M to compile, 12x the FLOPs
    # 6.6M tokens at ~400k tok/s (16 s), the eval graph, 11 validations of 262k tokens, HellaSwag
    # (1,000 examples) at steps 0 and 200, the final 1.5 GB checkpoint (~25 s): four fit 540 s
    "compare": STARTUP_S + COMPILE_S + 16 + 25,
}

GPU = Profile(
    device="cuda", dtype="bf16", compile=1, model=[], seq_len=1024,
    bench_steps=24,  # 16 steady steps; 24 steps cost < 4 s even at micro-batch 64
    batches=(16, 32, 64),
    hellaswag=["--device", "cuda", "--compile", "1"],
    train=dict(micro_batch=16, total_batch=32768, max_steps=80, warmup_steps=10,
               checkpoint_every=20, val_every=20, val_tokens=65536, hellaswag_every=40,
               hellaswag_limit=500, sample_every=40, num_samples=2, sample_tokens=32),
    stop_after=2,
    # 200 steps of 32,768 tokens (micro-batch 16 x 1024 x 2 accumulation steps): 6.6M tokens each,
    # 0.7 epoch of the 9M train tokens; a larger batch would leave too few steps for a schedule
    compare=dict(micro_batch=16, total_batch=32768, max_steps=200, warmup_steps=20, val_every=20,
                 val_tokens=262144, hellaswag_every=200, hellaswag_limit=1000, sample_every=0,
                 checkpoint_every=0),
    estimates=GPU_ESTIMATES,
)

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64"]
SMOKE = Profile(
    device="cpu", dtype="fp32", compile=0, model=TINY + ["--block_size", "64"], seq_len=64,
    bench_steps=3, batches=(2, 4, 8),
    hellaswag=["--device", "cpu", "--compile", "0", "--limit", "16", *TINY],  # block 1024
    # 12 steps is the least the checks need (5 losses before the resume, 3 after, 10 in all);
    # the stop lands past the checkpoint at step 4, the resume around step 8
    train=dict(micro_batch=2, total_batch=256, max_steps=12, warmup_steps=2, checkpoint_every=4,
               val_every=4, val_tokens=1024, hellaswag_every=6, hellaswag_limit=8,
               sample_every=6, num_samples=1, sample_tokens=8),
    stop_after=2,
    compare=dict(micro_batch=2, total_batch=128, max_steps=10, warmup_steps=1, val_every=1,
                 val_tokens=256, hellaswag_every=10, hellaswag_limit=4, sample_every=0,
                 checkpoint_every=0),
    # a loaded 2-core VM
    estimates={"env": 2, "ours": 4, "reference": 4, "hellaswag": 8, "train": 25, "xl": 4,
               "compare": 5},
    whole_matrix=False,  # the larger micro-batches run the very same code as the small one
)

GROUPS = ("matrix", "hellaswag", "train", "compare")


@dataclass
class Part:
    name: str
    group: str  # one of GROUPS
    kind: str  # key of Profile.estimates
    cmd: list
    needs_data: bool = False
    info: dict = field(default_factory=dict)  # what the summary shows even if it did not run
    pair: str = None  # the matrix part it is compared with: the two start only together


def build_plan(p, plan="check"):
    py = sys.executable
    run = ["--device", p.device, "--dtype", p.dtype, "--compile", str(p.compile),
           "--seq_len", str(p.seq_len), *p.model]
    if plan == "compare":
        return [Part(f"compare-{v.name}", "compare", "compare",
                     [py, "train_gpt2.py", *run, *compare.variant_flags(v, p.compare)],
                     needs_data=True, info=dict(variant=v.name, **p.compare))
                for v in compare.VARIANTS]
    common = run + ["--steps", str(p.bench_steps)]  # --benchmark's and the reference step's

    def ours(arch, batch, pair=True):
        return Part(f"matrix-{arch}-b{batch}", "matrix", "ours",
                    [py, "train_gpt2.py", "--benchmark", "--arch", arch, "--micro_batch",
                     str(batch), *common], info=dict(impl="ours", arch=arch, micro_batch=batch),
                    pair=f"reference-b{batch}" if pair else None)

    def reference(batch):
        return Part(f"reference-b{batch}", "matrix", "reference",
                    [py, "benchmarks/bench_reference_step.py", "--micro_batch", str(batch),
                     *common], info=dict(impl="reference", arch="gpt2", micro_batch=batch),
                    pair=f"matrix-gpt2-b{batch}")

    xl = Part(f"matrix-xl-ac-b{p.batches[0]}", "matrix", "xl",
              [py, "train_gpt2.py", "--benchmark", "--model", "gpt2-xl",
               "--activation_checkpointing", "1", "--micro_batch", str(p.batches[0]), *common],
              info=dict(impl="ours-xl", arch="gpt2-xl, act. ckpt", micro_batch=p.batches[0]))
    train = Part("train-resume", "train", "train",
                 [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                  "train_gpt2.py", "--arch", "gpt2", *run, *compare.flags(p.train)],
                 needs_data=True, info=dict(p.train, stop_after=p.stop_after))
    small, mid, large = p.batches
    # priority order, since the budget skips from the end: the headline speed pair, a preempted
    # run continuing exactly, HellaSwag, then the rest of the matrix
    return [ours("gpt2", small), reference(small), train,
            Part("hellaswag", "hellaswag", "hellaswag",
                 [py, "benchmarks/bench_hellaswag.py", *p.hellaswag], needs_data=True),
            *([ours("gpt2", large), reference(large), ours("gpt2", mid, pair=False)]
              if p.whole_matrix else []),
            ours("modern", small, pair=False),
            *([ours("modern", large, pair=False)] if p.whole_matrix else []), xl]


def select_parts(plan, parts_arg):
    if not parts_arg:
        return plan
    wanted = {w.strip() for w in parts_arg.split(",") if w.strip()}
    unknown = wanted - set(GROUPS) - {p.name for p in plan}
    if unknown:
        raise CheckError(f"--parts: unknown {', '.join(sorted(unknown))} for this --plan; use "
                         f"groups {', '.join(GROUPS)} or {', '.join(p.name for p in plan)}")
    return [p for p in plan if p.group in wanted or p.name in wanted]


def blocked_parts(plan, profile, data_problem, env_info):
    """{part name: why it cannot run at all}: no data, no CUDA, a trainer without its flag."""
    blocked = {p.name: data_problem for p in plan if p.needs_data and data_problem}
    for p in plan:
        variant = next((v for v in compare.VARIANTS if p.info.get("variant") == v.name), None)
        if variant and compare.missing_flag(variant):
            blocked[p.name] = compare.missing_flag(variant)
    if profile.device == "cuda" and not env_info.get("cuda_available", True):
        blocked.update({p.name: "torch sees no CUDA device (see env.json); use --smoke on a CPU"
                        for p in plan})
    return blocked


# -----------------------------------------------------------------------------
# 3. the output folder: four files, every one rewritten whole after each part

OUTPUT_FILES = ("summary.md", "results.jsonl", "env.json", "logs.tar.gz")
ARCHIVE = "logs.tar.gz"
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
LOG_CAP_BYTES = 512 * 2**10  # per log in the archive: a few dozen cannot near 16 MiB


def read_capped(path, cap=LOG_CAP_BYTES):
    """A log's bytes with its middle cut out past `cap`: the start (command, config) and the end
    (the error, the result line) are what a reader needs; a runaway log must not fill the
    archive."""
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        if size <= cap:
            return f.read()
        head = f.read(cap // 4)
        f.seek(size - (cap - cap // 4))
        tail = f.read()
    cut = f"\n[gpu_check: {size - len(head) - len(tail):,} bytes cut here]\n"
    return head + cut.encode() + tail


def clear_out(out):
    """Make --out hold nothing but what this run writes: anything else there would count against
    the 8 files that come back. Our own files from an earlier run are removed; others refused."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ours = set(OUTPUT_FILES) | {f"{n}.tmp" for n in OUTPUT_FILES}  # atomic_write's temp names
    others = sorted(p.name for p in out.iterdir() if p.name not in ours or not p.is_file())
    if others:
        raise CheckError(f"{out} holds {', '.join(others[:5])}, not gpu_check's output; "
                         "use an empty --out")
    for name in ours:
        (out / name).unlink(missing_ok=True)


class Outputs:
    """--out and the staging folder beside it: part logs and the runs' small files are written to
    the stage while they run (so --out only ever holds whole files) and packed after every part."""

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

    def write(self, name, data):
        data = data.encode() if isinstance(data, str) else data
        train_gpt2.atomic_write(str(self.out / name), lambda tmp: Path(tmp).write_bytes(data))

    def pack(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for path in sorted(p for p in self.stage.rglob("*") if p.is_file()):
                data = read_capped(path)
                info = tarfile.TarInfo(path.relative_to(self.stage).as_posix())
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
        self.write(ARCHIVE, buf.getvalue())

    def close(self):
        shutil.rmtree(self.stage, ignore_errors=True)


def default_dest(env):
    """benchmarks/results/<yyyymmdd>-<card>/ from env.json; a CPU smoke run's ends in -cpu-smoke,
    so nobody takes it for a GPU result."""
    date = (env.get("started") or "")[:10].replace("-", "") or time.strftime("%Y%m%d")
    card = re.sub(r"[^a-z0-9]+", "-", str(env.get("card") or "unknown").lower()).strip("-")
    return REPO / "benchmarks" / "results" / f"{date}-{card}{'-smoke' if env.get('smoke') else ''}"


def unpack(args):
    """The returned folder -> the folder to commit: the three text files copied, the archive's
    logs extracted beside them (the archive itself is not kept: git diffs text)."""
    src = Path(args.src)
    if not (src / "summary.md").is_file():
        raise CheckError(f"{src} has no summary.md; pass the folder `run --out` wrote")
    env = json.loads((src / "env.json").read_text()) if (src / "env.json").is_file() else {}
    if not args.dest and not env.get("card"):
        raise CheckError(f"{src}/env.json names no card; pass --dest "
                         "benchmarks/results/<yyyymmdd>-<card>")
    dest = (Path(args.dest) if args.dest else default_dest(env)).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise CheckError(f"{dest} is not empty; pick another --dest")
    members = []
    if (src / ARCHIVE).is_file():
        with tarfile.open(src / ARCHIVE) as tar:
            odd = [m.name for m in tar.getmembers() if not m.isfile() or len(m.name.split("/")) > 2
                   or not all(SAFE_NAME.fullmatch(x) and x not in (".", "..")
                              for x in m.name.split("/"))]
            if odd:
                raise CheckError(f"{src / ARCHIVE} holds unexpected entries: {', '.join(odd[:5])}")
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    dest.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES[:3]:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
    for name, data in members:
        (dest / name).parent.mkdir(exist_ok=True)
        (dest / name).write_bytes(data)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    print(f"unpacked {src} into {dest}: {len(files)} files ({', '.join(files)})")
    if dest.is_relative_to(REPO):
        print(f"commit it: git add {dest.relative_to(REPO)}")
    else:  # git add of a path outside the repository fails
        print(f"{dest} is outside the repository ({REPO}): to commit it, copy it to "
              f"{REPO}/benchmarks/results/{dest.name} first")


# -----------------------------------------------------------------------------
# 4. running parts: subprocesses with timeouts, logs, the time budget


class Interrupted(Exception):
    """SIGTERM/SIGINT to this script: stop the current part, write the summary, exit."""


def child_env(data_dir):
    env = {k: v for k, v in os.environ.items() if k not in (
        "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    data_dir = Path(data_dir).resolve()
    env.update(TIKTOKEN_CACHE_DIR=str(data_dir / "tiktoken_cache"),
               HELLASWAG_DIR=str(data_dir / "hellaswag"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def start(cmd, log, env):
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    # own process group, so a timeout can stop the whole tree (inductor compile workers included)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


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


def tail_text(text, n=15, width=300):
    return "\n".join(line[:width] for line in text.strip().splitlines()[-n:])


def last_json(text):
    """The last line of text that is a JSON object (the scripts print their result last)."""
    for line in reversed(text.splitlines()):
        if line.strip().startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


# the trainer's and the reference step's one line (torchrun may prefix a worker's lines)
OOM_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(error: out of memory.*)$", re.M)
# an uncaught OutOfMemoryError (bench_hellaswag.py and older code), or one torch.compile wrapped
OOM_TRACE = re.compile(r"^.*(?:OutOfMemoryError|CUDA out of memory).*$", re.M)


def oom_line(text):
    """The line of a part's output that says it ran out of CUDA memory, or None."""
    found = OOM_LINE.findall(text) or OOM_TRACE.findall(text)
    return found[-1].strip()[:300] if found else None


def outcome(why, log_path, seconds, **fields):
    """The record of a part: ok when `why` is None, else oom when its output says it ran out of
    memory (whatever the exit code: the OOM is the cause), else failed with the output's tail."""
    status, error = "ok", None
    if why:
        text = log_path.read_text(errors="replace")
        oom = oom_line(text)
        status, error = ("oom", f"{oom}\n({why})") if oom else ("failed",
                                                                 f"{why}\n{tail_text(text)}")
    return dict(status=status, seconds=round(seconds, 1), error=error, log=log_path.name, **fields)


def exit_why(rc, timed_out, timeout):
    return (f"timed out after {timeout:.0f} s" if timed_out
            else f"exit code {rc}" if rc != 0 else None)


class Estimator:
    """Static estimates, scaled within 0.5x..1.5x by how fast this machine was on the ok parts so
    far (most are dominated by the same thing, torch.compile). A failed or oom part stopped at a
    point nobody knows, so its seconds would make the card look faster than it is, and an
    estimate too low is the costly error: a part cut at the budget."""

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


def fits(plan, i, estimate, left, statuses):
    """-> None if plan[i] may start with `left` seconds to go, else why it is skipped for time.
    The first of a matrix pair starts only if the pair fits; the second only if the first ran."""
    part = plan[i]
    if part.pair in statuses:
        if statuses[part.pair] == "skipped":
            return f"its pair {part.pair} was skipped"
        partner = None
    else:
        partner = next((p for p in plan[i + 1:] if p.name == part.pair), None)
    need = estimate(part) + (estimate(partner) if partner else 0)
    if need <= left:
        return None
    return (f"needs ~{need:.0f} s" + (f" with its pair {partner.name}" if partner else "")
            + f", {max(0, left):.0f} s left")


class Runner:
    def __init__(self, profile, data_dir, out, budget_s):
        self.profile, self.data_dir, self.budget_s = profile, Path(data_dir), budget_s
        self.t0 = time.monotonic()
        self.env = child_env(data_dir)
        self.estimate = Estimator(profile.estimates)
        self.outputs = Outputs(out)
        self.records, self.env_info = [], {}
        self.running = None  # (part name, started at s, timeout s): the summary names it
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
        records and the files would disagree); a second signal does not cut the wind-down."""
        if self.stopping:
            return
        if self.saving:
            self.pending_signal = signum
            return
        self.stopping = True
        raise Interrupted(f"signal {signum}")

    def run_all(self, plan, blocked=None):
        """blocked: {part name: reason} for parts that cannot run at all."""
        blocked = blocked or {}
        for i, part in enumerate(plan):
            est = self.estimate(part)
            try:
                statuses = {r["part"]: r["status"] for r in self.records}
                late = fits(plan, i, self.estimate, self.left(), statuses)
                if part.name in blocked:
                    self.record(part, "skipped", reason=blocked[part.name])
                elif late:
                    self.record(part, "skipped", estimate_s=round(est), for_time=True,
                                reason=f"over the {self.budget_s:.0f} s budget: {late}")
                else:
                    # generous per part (a slow card still finishes), but a hang cannot eat the
                    # budget; a kill's grace comes out of the slack before the call's own limit
                    timeout = min(max(2.5 * est, est + 120), self.left())
                    # the log exists before the part is named running: a signal from here on
                    # finds it, and the archive holds the log of the part recorded failed
                    log_path = self.outputs.new_log(part)
                    self.running = (part.name, round(self.elapsed()), round(timeout))
                    self.save()  # a call killed during this part returns a summary naming it
                    run = {"train": self.run_train, "compare": self.run_compare}.get(
                        part.group, self.run_command)
                    rec = run(part, log_path, timeout)
                    if rec["status"] == "ok":
                        self.estimate.observe(part, rec["seconds"])
                    self.record(part, estimate_s=round(est), timeout_s=round(timeout), **rec)
            except Interrupted as e:
                done = {r["part"] for r in self.records}  # a record may have been saved already
                for rest in plan[i:]:
                    if rest.name in done:
                        continue
                    if self.running and self.running[0] == rest.name:
                        self.record(rest, "failed", error=f"gpu_check.py was interrupted ({e}) "
                                    "during this part")
                    else:
                        self.record(rest, "skipped", reason=f"gpu_check.py was interrupted ({e})")
                raise
            except Exception as e:  # a bug here must not cost the parts after it
                self.record(part, "failed", error=f"gpu_check.py: {type(e).__name__}: {e}")

    def record(self, part, status=None, **fields):
        rec = {"part": part.name, "group": part.group, "status": status or fields.pop("status"),
               "config": part.info, "command": shlex.join(part.cmd), **fields}
        self.records.append(rec)
        self.running = None
        self.save()
        print(f"[gpu_check] {part.name}: {rec['status']}"
              + (f" ({rec['seconds']:.0f} s)" if "seconds" in rec else "")
              + (f" - {note(rec)}" if rec["status"] != "ok" else ""), flush=True)

    def save(self):
        """Rewrite all four files of --out: the archive first and the summary last, so the summary
        never names a part whose log is not in the archive yet."""
        self.saving = True
        try:
            self.outputs.pack()
            self.outputs.write("results.jsonl", "".join(json.dumps(r) + "\n"
                                                        for r in self.records))
            self.outputs.write("env.json", json.dumps(self.env_info, indent=1) + "\n")
            try:
                self.summary_text = summary_markdown(self.records, self.env_info, self.budget_s,
                                                     self.elapsed(), self.running)
            except Exception as e:  # a bug in the tables must not stop the run or lose statuses
                self.summary_text = "\n".join(
                    [f"# gpu_check: the summary failed ({type(e).__name__}: {e})", ""]
                    + [f"- {r['part']}: {r['status']} {note(r)}" for r in self.records]) + "\n"
            self.outputs.write("summary.md", self.summary_text)
        finally:
            self.saving = False
        if self.pending_signal is not None and not self.stopping:
            signum, self.pending_signal, self.stopping = self.pending_signal, None, True
            raise Interrupted(f"signal {signum}")

    def run_logged(self, part, cmd, log_path, timeout):
        with open(log_path, "a") as log:
            return wait(start(cmd, log, self.env), timeout, self.grace(part))

    def run_command(self, part, log_path, timeout):
        """A script that prints one JSON result line last and exits 0."""
        t = time.monotonic()
        rc, timed_out = self.run_logged(part, part.cmd, log_path, timeout)
        result = last_json(log_path.read_text(errors="replace"))
        why = exit_why(rc, timed_out, timeout) or (
            "exit code 0 but no JSON result line" if result is None else None)
        return outcome(why, log_path, time.monotonic() - t, rc=rc, timed_out=timed_out,
                       result=result)

    def trainer_run(self, part):
        """-> (command, log_dir, keep): the trainer on the carried shards, writing into a temp
        folder (checkpoints are GBs: never under --out); `keep` is packed into logs.tar.gz."""
        log_dir = Path(tempfile.mkdtemp(prefix="gpu_check_run_")) / "log"
        cmd = part.cmd + ["--data_dir", str(self.data_dir.resolve() / "shards"),
                          "--log_dir", str(log_dir)]
        return cmd, log_dir, self.outputs.keep_dir(part)

    def run_compare(self, part, log_path, timeout):
        """One variant of the comparison: train, then its figures from log.txt and config.json."""
        cmd, log_dir, keep = self.trainer_run(part)
        t = time.monotonic()
        try:
            rc, timed_out = self.run_logged(part, cmd, log_path, timeout)
            why = exit_why(rc, timed_out, timeout)
            result = None if why else compare.figures(log_dir)
            return outcome(why, log_path, time.monotonic() - t, rc=rc, result=result)
        finally:
            save_run_files(log_dir, keep)

    def run_train(self, part, log_path, timeout):
        """Start, SIGTERM a few steps past the first checkpoint, resume to the end, check."""
        spec, deadline = part.info, time.monotonic() + timeout
        cmd, log_dir, keep = self.trainer_run(part)
        t = time.monotonic()
        result = {"max_steps": spec["max_steps"]}
        try:
            stop_rc, why = self.run_until_stopped(part, cmd, log_path, log_dir, deadline)
            result.update(stop_rc=stop_rc, phase1_s=round(time.monotonic() - t, 1))
            if (log_dir / "log.txt").is_file():
                shutil.copyfile(log_dir / "log.txt", keep / "log_stopped.txt")
            if not why:
                ckpts = checkpoint_steps(log_dir)
                result["resume_step"] = ckpts[-1] if ckpts else None
                t2 = time.monotonic()
                rc, timed_out = self.run_logged(part, cmd + ["--resume"], log_path,
                                                deadline - time.monotonic())
                result.update(resume_rc=rc, phase2_s=round(time.monotonic() - t2, 1))
                why = exit_why(rc, timed_out, deadline - t2)
                why = why and f"the resumed run: {why}"
            if not why:
                result.update(analyse_train_run(log_dir, keep / "log_stopped.txt", spec, stop_rc,
                                                result["resume_step"]))
                bad = [name for name, c in result["checks"].items() if not c["ok"]]
                why = bad and f"checks failed: {', '.join(bad)}"
            return outcome(why or None, log_path, time.monotonic() - t, result=result)
        finally:
            save_run_files(log_dir, keep)  # whatever happened, an interrupt included

    def run_until_stopped(self, part, cmd, log_path, log_dir, deadline):
        """Phase 1: run until log.txt has a train record stop_after steps past the first
        checkpoint, then SIGTERM torchrun (as a preempted job gets). -> (exit code, why failed)."""
        after = part.info["stop_after"]
        with open(log_path, "a") as log:
            proc = start(cmd, log, self.env)
            try:
                while not (checkpoint_steps(log_dir) and last_train_step(log_dir / "log.txt")
                           >= checkpoint_steps(log_dir)[0] + after):
                    if proc.poll() is not None:
                        return proc.returncode, (f"the first run ended (exit code "
                                                 f"{proc.returncode}) before it could be stopped")
                    if time.monotonic() > deadline:
                        return None, f"no checkpoint and a train record {after} steps past it"
                    time.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                rc, timed_out = wait(proc, min(120, deadline - time.monotonic()), self.grace(part))
                return rc, ("the stopped run did not exit in time after SIGTERM"
                            if timed_out else None)
            finally:
                stop(proc, self.grace(part))


def save_run_files(log_dir, keep):
    for name in ("log.txt", "config.json", "samples.txt"):
        if (log_dir / name).is_file():
            shutil.copyfile(log_dir / name, keep / name)
    shutil.rmtree(log_dir.parent, ignore_errors=True)


def checkpoint_steps(log_dir):
    return [int(re.search(r"model_(\d+)\.pt$", p).group(1))
            for p in train_gpt2.list_checkpoints(str(log_dir))]


# -----------------------------------------------------------------------------
# 5. checking the training log


def last_train_step(log_path):
    """The newest train record of a log still being written (its last line may be half done)."""
    try:
        records = train_gpt2.read_log(log_path).records
    except OSError:
        return -1
    return max((s for s, name, _ in records if name == "train"), default=-1)


def due_steps(every, max_steps):
    """The steps where the trainer runs a periodic task: multiples of `every`, and the last."""
    return set(range(0, max_steps + 1, every)) | {max_steps} if every > 0 else set()


def by_name(records, name):
    """{step: [values]} of one stream, every record kept (so a step logged twice shows)."""
    out = {}
    for step, n, value in records:
        if n == name:
            out.setdefault(step, []).append(value)
    return out


def check(ok, detail=""):
    return {"ok": bool(ok), "detail": detail}


def check_schedule(found, expected):
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    twice = sorted(s for s, v in found.items() if len(v) > 1)
    if missing or extra or twice:
        return check(False, f"missing {missing[:10]}, unexpected {extra[:10]}, "
                            f"logged twice {twice[:10]}")
    return check(True, f"{len(expected)} steps")


def continuity(train, resume_step, band=0.3):
    """The first 3 losses after the resume must not jump above the median of the 5 before it."""
    before = [train[s][0] for s in range(resume_step - 5, resume_step) if s in train]
    after = [train[s][0] for s in range(resume_step, resume_step + 3) if s in train]
    if not before or not after:
        return check(False, f"no losses around step {resume_step}")
    ref = statistics.median(before)
    return check(max(after) <= ref + band,
                 f"after {[round(v, 3) for v in after]} vs median before {ref:.3f} (+{band})")


def analyse_train_run(log_dir, stopped_log, spec, stop_rc, resume_step):
    """The checks on the finished run, and the figures the summary reports."""
    records = train_gpt2.read_log(log_dir / "log.txt").records
    stopped = train_gpt2.read_log(stopped_log).records if stopped_log.is_file() else []
    stopped_after = max((s for s, n, _ in stopped if n == "train"), default=None)
    max_steps, resume_step = spec["max_steps"], resume_step or 0
    train = by_name(records, "train")
    losses = [train[s][0] for s in sorted(train)]
    first, last = ((statistics.median(losses[:5]), statistics.median(losses[-5:]))
                   if len(losses) >= 10 else (0, 0))
    checks = {
        "stopped_with_checkpoint": check(
            stop_rc in (0, 1, 143) and stopped_after is not None
            and resume_step == stopped_after + 1,
            f"exit code {stop_rc} (torchrun exits 1 after forwarding SIGTERM), last train step "
            f"{stopped_after}, newest checkpoint {resume_step}"),
        "one_train_record_per_step": check_schedule(train, range(max_steps)),
        "val_at_expected_steps": check_schedule(by_name(records, "val"),
                                                due_steps(spec["val_every"], max_steps)),
        "hella_at_expected_steps": check_schedule(by_name(records, "hella"),
                                                  due_steps(spec["hellaswag_every"], max_steps)),
        "all_values_finite": check(all(math.isfinite(v) for _, _, v in records),
                                   f"{len(records)} values"),
        "log_before_resume_kept": check(
            [r for r in records if r[0] < resume_step]
            == [r for r in stopped if r[0] < resume_step],
            "the records of the steps before the resume are the stopped run's"),
        "loss_continuous_across_resume": continuity(train, resume_step),
        "final_checkpoint_exists": check(max_steps in checkpoint_steps(log_dir),
                                         f"model_{max_steps:05d}.pt"),
        "loss_decreased": check(last < first, f"median of the first 5 losses {first:.3f}, "
                                              f"of the last 5 {last:.3f}"),
    }

    def steady(name, lo=0, hi=max_steps):  # the first step of each process includes the compile
        vals = [v[0] for s, v in by_name(records, name).items()
                if lo <= s < hi and s not in (0, resume_step)]
        return round(statistics.median(vals), 4) if vals else None

    per_step = lambda name: {str(s): v[0] for s, v in sorted(by_name(records, name).items())}
    return {"stopped_after_step": stopped_after, "checks": checks,
            "checks_passed": all(c["ok"] for c in checks.values()),
            "train_loss": [round(v, 4) for v in losses], "val_loss": per_step("val"),
            "hella": per_step("hella"), "tok_per_s_median": steady("tok/s"),
            "tok_per_s_before_stop": steady("tok/s", hi=resume_step),
            "tok_per_s_after_resume": steady("tok/s", lo=resume_step),
            "mfu_median": steady("mfu")}


# -----------------------------------------------------------------------------
# 6. environment and summary

ENV_PROBE = r"""
import json, sys, torch
info = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "devices": []}
if torch.cuda.is_available():
    info["cudnn"] = torch.backends.cudnn.version()
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2**30, 1),
                                "sms": p.multi_processor_count})
print(json.dumps(info))
"""
NVIDIA_SMI = {"nvidia_smi_L": ["-L"], "nvidia_smi": [
    "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm", "--format=csv"]}


def collect_env(env, data_dir):
    """torch/CUDA/card from a subprocess, so this process never creates a CUDA context."""
    info = {"python_runner": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        proc = subprocess.run([sys.executable, "-c", ENV_PROBE], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
        info.update(last_json(proc.stdout) or {"probe_error": tail_text(proc.stderr, 5)})
    except subprocess.TimeoutExpired:
        info["probe_error"] = "the torch probe timed out"
    info["card"] = info["devices"][0]["name"] if info.get("devices") else "cpu"
    for key, args in NVIDIA_SMI.items() if shutil.which("nvidia-smi") else ():
        try:
            info[key] = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True,
                                       timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info[key] = f"failed: {e}"
    info["git"] = git_info()
    manifest = Path(data_dir) / MANIFEST
    if manifest.is_file():  # where git does not work, this says which commit made the data
        prepared = json.loads(manifest.read_text())
        info["data_prepared_at"] = {k: prepared.get(k) for k in ("created", "git", "smoke")}
    info["sources_sha256"] = {f: sha256_file(REPO / f) for f in SOURCE_FILES
                              if (REPO / f).is_file()}
    return info


def fmt(value, spec=""):
    return "" if value is None else f"{value:{spec}}"


def note(rec):
    text = rec.get("reason") or rec.get("error") or ""
    return text.splitlines()[0].replace("|", "/")[:160] if text else ""


def table(header, records, cells):
    """One row per record: part and status, cells(record, its result, its config), seconds and
    the note; so every table says those four the same way."""
    lines = ["| " + " | ".join(["part", "status", *header, "seconds", "note"]) + " |",
             "|" + " --- |" * (len(header) + 4)]
    for r in records:
        row = [r["part"], r["status"], *cells(r, r.get("result") or {}, r["config"]),
               fmt(r.get("seconds"), ".0f"), note(r)]
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return lines


def matrix_section(records):
    ref = {r["config"]["micro_batch"]: r["result"]["tokens_per_s"] for r in records
           if r["config"]["impl"] == "reference" and r["status"] == "ok"}

    def cells(r, res, cfg):
        ratio = ""
        if r["status"] == "ok" and cfg["impl"] == "ours" and cfg["micro_batch"] in ref:
            ratio = f"{res['tokens_per_s'] / ref[cfg['micro_batch']]:.3f}x"
        return [cfg["impl"], cfg["arch"], cfg["micro_batch"], fmt(res.get("tokens_per_s"), ",.0f"),
                ratio, fmt(res.get("mfu"), ".1%"), fmt(res.get("step_ms"), ".1f"),
                f"{fmt(res.get('peak_mem_gib'), '.2f')} / {fmt(res.get('estimate_gib'), '.2f')}",
                fmt(res.get("compile_s"), ".1f")]

    # by micro-batch, each config beside the reference it is compared with
    rank = {"ours": 0, "reference": 1}
    ordered = sorted(records, key=lambda r: (r["config"]["micro_batch"],
                                             r["config"]["arch"] != "gpt2",
                                             rank.get(r["config"]["impl"], 2)))
    lines = table(["impl", "arch", "micro-batch", "tokens/s", "vs reference", "MFU", "step ms",
                   "peak / estimate GiB", "compile s"], ordered, cells)
    status = {(r["config"]["impl"], r["config"]["micro_batch"]): r for r in records
              if r["config"]["arch"] == "gpt2"}
    missing = []
    for mb in sorted({mb for impl, mb in status if impl == "reference"}):
        pair = [status.get((impl, mb)) for impl in ("ours", "reference")]
        if not all(r and r["status"] == "ok" for r in pair):
            missing.append(f"- b{mb}: " + ", ".join(
                f"{r['part']} {r['status']}" + (f" ({note(r)})" if r["status"] != "ok" else "")
                for r in pair if r))
    if not missing:
        return lines + ["", "Every reference pair ran."]
    return lines + ["", "Reference pairs not both ok, so without a ratio:"] + missing


def train_section(records):
    def cells(r, res, cfg):
        checks = res.get("checks", {})
        loss, val = res.get("train_loss") or [], list((res.get("val_loss") or {}).values())
        hella = list((res.get("hella") or {}).values())
        return [cfg["max_steps"], f"{fmt(res.get('stopped_after_step'))} / "
                f"{fmt(res.get('resume_step'))}", f"{fmt(res.get('stop_rc'))} / "
                f"{fmt(res.get('resume_rc'))}",
                f"{sum(c['ok'] for c in checks.values())}/{len(checks)}" if checks else "",
                f"{loss[0]:.3f} -> {loss[-1]:.3f}" if loss else "",
                f"{val[0]:.3f} -> {val[-1]:.3f}" if val else "",
                fmt(hella[-1], ".4f") if hella else "", fmt(res.get("tok_per_s_median"), ",.0f"),
                fmt(res.get("mfu_median"), ".1%")]

    lines = table(["steps", "stopped after / resumed at", "stop rc / resume rc", "checks",
                   "train loss", "val loss", "hella (last)", "median tok/s", "MFU"], records, cells)
    for res in (r.get("result") or {} for r in records):
        lines += [""] + [f"- {'PASS' if c['ok'] else 'FAIL'} {name}: {c['detail']}"
                         for name, c in res.get("checks", {}).items()]
        if res.get("train_loss"):
            # the stopped and the resumed process compile separately: a gap is a finding
            val = ", ".join(f"{s}: {v:.3f}" for s, v in res["val_loss"].items())
            lines += [f"- val loss: {val}", "- median tok/s before the stop "
                      f"{fmt(res.get('tok_per_s_before_stop'), ',.0f')}, after the resume "
                      f"{fmt(res.get('tok_per_s_after_resume'), ',.0f')}"]
    return lines


def hellaswag_section(records):
    def cells(r, res, cfg):
        ref, fast = res.get("reference", {}), res.get("batched", {})
        return [res.get("examples", ""), res.get("dtype", ""), fmt(ref.get("seconds"), ".1f"),
                fmt(fast.get("seconds"), ".2f"), fmt(fast.get("first_call_seconds"), ".1f"),
                fmt(res.get("speedup"), ".1f"),
                f"{fmt(ref.get('acc_norm'), '.4f')} / {fmt(fast.get('acc_norm'), '.4f')}",
                res.get("predictions_differing", "")]

    return table(["examples", "dtype", "reference s", "batched s", "batched first call s",
                  "speedup x", "acc_norm ref / batched", "predictions differing"], records, cells)


def compare_section(records):
    runs = [(r["config"]["variant"], r["status"], r.get("result"),
             shlex.join(["python", *shlex.split(r["command"])[1:]])) for r in records]
    cfg = records[0]["config"]
    return [f"{cfg['max_steps']} steps of {cfg['total_batch']:,} tokens "
            f"({cfg['max_steps'] * cfg['total_batch'] / 1e6:.2f}M tokens) each, validation every "
            f"{cfg['val_every']} steps on {cfg['val_tokens']:,} held-out tokens, HellaSwag on "
            f"the first {cfg['hellaswag_limit']} examples at the end.", "",
            *compare.comparison(runs)]


SECTIONS = [("matrix", "Trainer speed: `train_gpt2.py --benchmark` vs the plain reference step",
             matrix_section),
            ("train", "Real-data run stopped with SIGTERM and resumed (torchrun, 1 process)",
             train_section),
            ("hellaswag", "HellaSwag: one-example reference loop vs batched evaluator",
             hellaswag_section),
            ("compare", "Real text: variants at equal tokens (benchmarks/compare.py)",
             compare_section)]

STATUS_MEANING = {
    "ok": "ran to the end; its figures are in the tables and results.jsonl",
    "failed": "an exit code, a timeout, no result line or a failed train check: see the note, "
              "and the part's log in logs.tar.gz",
    "oom": "CUDA out of memory (the card is too small for this micro-batch); the plan went on",
    "skipped": "did not run: over the time budget, data or CUDA missing, a trainer option "
               "missing, or gpu_check.py was interrupted (the note says which)",
}


def summary_markdown(records, env, budget_s, elapsed, running=None):
    counts = Counter(r["status"] for r in records)
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    if not commit:  # no git on the device: the commit the carried data was prepared at
        prepared = ((env.get("data_prepared_at") or {}).get("git") or {}).get("commit")
        commit = f"{prepared[:12]} (data prepared at)" if prepared else "?"
    title = (f"# gpu_check SMOKE RUN (tiny model on the CPU, not a GPU result): {env.get('card')}"
             if env.get("smoke") else f"# gpu_check: {env.get('card', '?')}")
    head = [f"{title}, torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}", "",
            f"{time.strftime('%Y-%m-%d %H:%M %Z')}; plan {env.get('plan', 'check')}; commit "
            f"{commit}; budget {budget_s:.0f} s, used {elapsed:.0f} s; "
            + ", ".join(f"{counts[s]} {s}" for s in STATUS_MEANING), ""]
    if running:
        name, since, timeout = running
        head += [f"**Running now: {name}** (started at {since} s, timeout {timeout} s). A "
                 "summary that still says so is from a call that ended during this part; its log "
                 "in logs.tar.gz is still empty (a log is packed when its part ends).", ""]
    body = []
    for group, title, section in SECTIONS:
        mine = [r for r in records if r["group"] == group]
        if mine:  # a --parts subset leaves the others out
            body += [f"## {title}", ""] + section(mine) + [""]
    not_ok = [f"- {r['part']} ({r['status']}): {note(r)}" for r in records if r["status"] != "ok"]
    if not_ok:
        body += ["## Not ok", ""] + not_ok + [""]
    late = [r["part"] for r in records if r.get("for_time")]
    if late:
        plan = f" --plan {env['plan']}" if env.get("plan", "check") != "check" else ""
        body += ["Skipped for time; the next call runs them: `python benchmarks/gpu_check.py run "
                 f"--data .carry/gpu_check --out $OUT/gpu_check{plan} --parts {','.join(late)}`",
                 ""]
    body += ["## Statuses and files", ""] + [f"- **{s}**: {m}" for s, m in STATUS_MEANING.items()]
    body += ["- files: summary.md, results.jsonl (one object per part), env.json, logs.tar.gz "
             "(each part's `<part>.log` and its run's files); `python benchmarks/gpu_check.py "
             "unpack DIR` writes the folder to commit", ""]
    return "\n".join(head + body)


# -----------------------------------------------------------------------------
# 7. command line


def run(args):
    profile = SMOKE if args.smoke else GPU
    plan = select_parts(build_plan(profile, args.plan), args.parts)
    data_problem = verify_data(args.data, args.smoke)
    if args.dry_run:
        print(f"data: {data_problem or 'ok'}")  # the plan below is what a run with data does
        return dry_run(plan, profile, args, blocked_parts(plan, profile, None, {}))
    if not args.out:
        raise CheckError("run: --out is required (except with --dry_run)")
    clear_out(args.out)
    runner = Runner(profile, args.data, args.out, args.budget_s)
    runner.env_info = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "plan": args.plan,
                       "smoke": bool(args.smoke)}
    signal.signal(signal.SIGTERM, runner.on_signal)
    signal.signal(signal.SIGINT, runner.on_signal)
    try:
        runner.save()  # the four files exist from the start: a call killed in the probe says so
        runner.env_info.update(collect_env(runner.env, args.data), data_problem=data_problem)
        print(f"[gpu_check] {runner.env_info['card']}, torch {runner.env_info.get('torch')}, "
              f"{len(plan)} parts, budget {args.budget_s:.0f} s", flush=True)
        runner.run_all(plan, blocked_parts(plan, profile, data_problem, runner.env_info))
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


def dry_run(plan, profile, args, blocked):
    """The plan as the run would start it: order, estimate, when each part would start, whether
    it fits. The run rescales the estimates by the parts it has finished, so later lines move."""
    est, at = Estimator(profile.estimates), float(profile.estimates["env"])
    limit = args.budget_s - RESERVE_S
    print(f"plan {args.plan} ({'smoke, CPU' if args.smoke else 'GPU'}): budget {args.budget_s:.0f}"
          f" s, {limit:.0f} s for the parts after {RESERVE_S} s kept for the summary")
    if not args.smoke:
        print(f"estimates assume a fresh process starts in ~{STARTUP_S} s and compiles GPT-2 124M "
              f"in ~{COMPILE_S} s (an H100 takes 40-90 s); the run rescales them 0.5x-1.5x by the "
              "finished ok parts")
    print(f" 0. {'env probe':22s} ~{profile.estimates['env']:4.0f} s  starts at    0 s")
    statuses, late = {}, []
    for i, part in enumerate(plan):
        why = blocked.get(part.name) or fits(plan, i, est, limit - at, statuses)
        statuses[part.name] = "skipped" if why else "ok"
        print(f"{i + 1:2d}. {part.name:22s} ~{est(part):4.0f} s  "
              + (f"SKIPPED ({why})" if why else f"starts at {at:4.0f} s")
              + f"  {shlex.join(part.cmd[1:])}")
        if not why:
            at += est(part)
        elif part.name not in blocked:
            late.append(part.name)
    print(f"estimated total: {at:.0f} s of {limit:.0f} s; "
          + (f"skipped for time unless the first parts run faster: {', '.join(late)}; "
             f"a next call: --parts {','.join(late)}" if late else "every part that can run fits"))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="GPU check: prepare the data here, run it on the GPU.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make the data folder a GPU call carries (on the CPU)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--smoke", action="store_true", help="a smaller folder, for run --smoke")
    prep.add_argument("--shared", default=str(SHARED_DATA),
                      help="the offline data (corpus/, tiktoken_cache/, hellaswag/)")
    r = sub.add_parser("run", help="run a plan; write summary.md, results.jsonl, env.json, "
                       "logs.tar.gz into --out")
    r.add_argument("--plan", default="check", choices=["check", "compare"])
    r.add_argument("--data", default=str(REPO / ".carry" / "gpu_check"))
    r.add_argument("--out", default=None, help="an empty or new folder (or one a run wrote)")
    r.add_argument("--budget_s", type=float, default=540, help="wall-clock seconds for all")
    r.add_argument("--smoke", action="store_true", help="tiny model on the CPU, same code paths")
    r.add_argument("--parts", default=None, help="comma-separated groups or part names")
    r.add_argument("--dry_run", action="store_true", help="print the plan and exit")
    u = sub.add_parser("unpack", help="the folder a run returned -> the folder to commit")
    u.add_argument("src", help="the returned folder (run's --out)")
    u.add_argument("--dest", default=None,
                   help="default: benchmarks/results/<yyyymmdd>-<card> from env.json")
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
