"""
One command for a short GPU window, two plans, each its own device call of at most 9 minutes:

  check    trainer speed vs a plain reference step, a real-data run stopped with SIGTERM and
           resumed, HellaSwag eval speed, gpt2-xl with activation checkpointing;
  compare  variants at equal tokens on the real-text corpus (benchmarks/compare.py).

    python benchmarks/gpu_check.py prepare --out .carry/gpu_check        # here, on the CPU, once
    python benchmarks/gpu_check.py run --data .carry/gpu_check --out $OUT/gpu_check [--plan compare]
    python benchmarks/gpu_check.py unpack FILES_AT/gpu_check          # here: the folder to commit

Every part is a subprocess with its own timeout; a failing part is recorded and the run goes on.
What does not fit the budget is skipped and named in the summary with the next call's `--parts`.
--out only ever holds summary.md, results.jsonl, env.json and logs.tar.gz (the device hands back
at most 8 files), each rewritten whole after every part: a call killed at its limit returns all
that finished before. `--smoke` runs the same code paths tiny on the CPU. See benchmarks/README.md.
"""

import argparse
import contextlib
import hashlib
import io
import itertools
import json
import math
import os
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
MAX_CARRY_BYTES = 40 * 2**20


class CheckError(Exception):
    """A problem the user must fix before anything runs: printed as one line, exit code 1."""


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def output_of(cmd, env=None, timeout=120):
    """stdout and stderr of a short command, or what went wrong: a probe never stops the run."""
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
        return proc.stdout + proc.stderr
    except (OSError, subprocess.SubprocessError) as e:
        return f"failed: {e}"


def git_info():
    """Commit and changed tracked files; {} where git does not work (the device machine's copy of
    the working tree may have no .git)."""
    head = output_of(["git", "rev-parse", "HEAD"], timeout=10).strip()
    if not re.fullmatch(r"[0-9a-f]{40}", head):
        return {}
    dirty = output_of(["git", "status", "--porcelain", "--untracked-files=no"], timeout=10)
    return {"commit": head, "dirty_files": [line[3:] for line in dirty.splitlines()]}


# -----------------------------------------------------------------------------
# 1. prepare: the folder the GPU call carries

# full: 1 val + 9 train shards of 1M tokens: train-resume reads 80 x 32768 = 2.6M train tokens,
# each compare variant 200 x 32768 = 6.6M, so neither sees a token twice. smoke: a few hundred KB.
DATA_SIZES = {False: dict(shard_size=1_000_000, max_tokens=10_000_000, hellaswag_lines=None),
              True: dict(shard_size=50_000, max_tokens=200_000, hellaswag_lines=64)}


def prepare(args):
    shared, out, size = Path(args.shared), Path(args.out), DATA_SIZES[args.smoke]
    # textbooks first: the val shard (shard 0), the held-out set, is then clean educational prose
    corpus = sorted((shared / "corpus").glob("*.jsonl.gz"),
                    key=lambda p: ("openstax" not in p.name, p.name))
    tiktoken = [shared / "tiktoken_cache" / name for name in TIKTOKEN_FILES]
    hellaswag = shared / "hellaswag" / "hellaswag_val.jsonl"
    missing = ([str(p) for p in [*tiktoken, hellaswag] if not p.is_file()]
               + ([] if corpus else [str(shared / "corpus" / "*.jsonl.gz")]))
    if missing:
        raise CheckError(f"missing sources: {', '.join(missing)} (pass --shared DIR)")
    if out.exists() and any(out.iterdir()):
        if not (out / MANIFEST).is_file():
            raise CheckError(f"{out} exists and is not a gpu_check data folder; pick another --out")
        shutil.rmtree(out)  # ours: remade from scratch, so its manifest always describes it
    for src in [*tiktoken, hellaswag]:
        (out / src.parent.name).mkdir(parents=True, exist_ok=True)
        with open(src, "rb") as f, open(out / src.parent.name / src.name, "wb") as g:
            # a smoke folder keeps the first 64 HellaSwag examples; None: all of a file
            g.writelines(itertools.islice(f, size["hellaswag_lines"] if src == hellaswag else None))
    proc = subprocess.run(
        [sys.executable, "fineweb.py", "--source", *map(str, corpus), "--local_dir",
         str(out / "shards"), "--shard_size", str(size["shard_size"]), "--max_tokens",
         str(size["max_tokens"])], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, TIKTOKEN_CACHE_DIR=str(out / "tiktoken_cache")))
    if proc.returncode != 0:
        raise CheckError(f"fineweb.py failed (exit {proc.returncode}): "
                         f"{tail_text(proc.stderr + proc.stdout, 3)}")
    # sizes only: what goes wrong with a carried folder is a file missing or cut short
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    shards = {split: len(list((out / "shards").glob(f"*_{split}_*.npy")))
              for split in ("val", "train")}
    (out / MANIFEST).write_text(json.dumps({"smoke": args.smoke, "created": now(),
                                            "git": git_info(), "shards": shards,
                                            "sizes": sizes}, indent=1))
    total = sum(sizes.values())
    if total > MAX_CARRY_BYTES:
        raise CheckError(f"{out} holds {total / 2**20:.1f} MB, more than the "
                         f"{MAX_CARRY_BYTES // 2**20} MB a GPU call carries")
    print(f"prepared {out}: {shards['val']} val + {shards['train']} train shards of "
          f"{size['shard_size']:,} tokens, tiktoken cache, HellaSwag val; {total / 2**20:.1f} MB")


def verify_data(data_dir, smoke=False):
    """None if data_dir holds the files of its manifest at their sizes, else a one-line problem.
    A --smoke folder is too small for the GPU run (64 HellaSwag examples, 150k train tokens)."""
    data_dir = Path(data_dir)
    manifest = json.loads((data_dir / MANIFEST).read_text()) if (
        data_dir / MANIFEST).is_file() else {}
    if "sizes" not in manifest:
        return (f"no {MANIFEST} of this gpu_check.py in {data_dir}; "
                f"run `python benchmarks/gpu_check.py prepare --out {data_dir}`")
    if manifest["smoke"] and not smoke:
        return f"{data_dir} was made by `prepare --smoke`; run prepare without --smoke for the GPU"
    for name, size in manifest["sizes"].items():
        if not (data_dir / name).is_file() or (data_dir / name).stat().st_size != size:
            return f"{data_dir / name} is missing or differs from {MANIFEST}; re-run prepare"
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
    whole_plan: bool = True  # False: one part per code path (the smoke run: CI's time is short)


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
    batches=(16, 32, 64), hellaswag=["--device", "cuda", "--compile", "1"],
    train=dict(micro_batch=16, total_batch=32768, max_steps=80, warmup_steps=10,
               checkpoint_every=20, val_every=20, val_tokens=65536, hellaswag_every=40,
               hellaswag_limit=500, sample_every=40, num_samples=2, sample_tokens=32),
    stop_after=2,
    # 200 steps of 32,768 tokens (micro-batch 16 x 1024 x 2 accumulation steps): 6.6M tokens each,
    # 0.7 epoch of the 9M train tokens; a larger batch would leave too few steps for a schedule
    compare=dict(micro_batch=16, total_batch=32768, max_steps=200, warmup_steps=20, val_every=20,
                 val_tokens=262144, hellaswag_every=200, hellaswag_limit=1000, sample_every=0,
                 checkpoint_every=0),
    estimates=GPU_ESTIMATES)

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
    compare=dict(micro_batch=2, total_batch=128, max_steps=4, warmup_steps=1, val_every=1,
                 val_tokens=256, hellaswag_every=4, hellaswag_limit=4, sample_every=0,
                 checkpoint_every=0),
    estimates={"env": 2, "ours": 4, "reference": 4, "hellaswag": 8, "train": 25, "xl": 4,
               "compare": 5},  # a loaded 2-core VM
    # the larger micro-batches run the very same code as the small one, and so do the variants
    # that differ from gpt2 in trainer flags only (modern, muon: the trainer's tests cover them)
    whole_plan=False)

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
    if plan == "compare":  # the smoke: the target, and the path of a variant with its own schedule
        return [Part(f"compare-{v.name}", "compare", "compare",
                     [py, "train_gpt2.py", *run, *compare.variant_flags(v, p.compare)],
                     needs_data=True, info=dict(variant=v.name, **p.compare))
                for v in compare.VARIANTS
                if p.whole_plan or v is compare.VARIANTS[0] or v.own_schedule]
    common = run + ["--steps", str(p.bench_steps)]  # --benchmark's and the reference step's

    def ours(arch, batch, pair=None):
        return Part(f"matrix-{arch}-b{batch}", "matrix", "ours",
                    [py, "train_gpt2.py", "--benchmark", "--arch", arch, "--micro_batch",
                     str(batch), *common], info=dict(impl="ours", arch=arch, micro_batch=batch),
                    pair=pair)

    def pair(batch):  # ours and the reference at one micro-batch: the ratio needs both
        return [ours("gpt2", batch, pair=f"reference-b{batch}"),
                Part(f"reference-b{batch}", "matrix", "reference",
                     [py, "benchmarks/bench_reference_step.py", "--micro_batch", str(batch),
                      *common], info=dict(impl="reference", arch="gpt2", micro_batch=batch),
                     pair=f"matrix-gpt2-b{batch}")]

    small, mid, large = p.batches
    xl = Part(f"matrix-xl-ac-b{small}", "matrix", "xl",
              [py, "train_gpt2.py", "--benchmark", "--model", "gpt2-xl",
               "--activation_checkpointing", "1", "--micro_batch", str(small), *common],
              info=dict(impl="ours-xl", arch="gpt2-xl, act. ckpt", micro_batch=small))
    train = Part("train-resume", "train", "train",
                 [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                  "train_gpt2.py", "--arch", "gpt2", *run, *compare.flags(p.train)],
                 needs_data=True, info=dict(p.train, stop_after=p.stop_after))
    hellaswag = Part("hellaswag", "hellaswag", "hellaswag",
                     [py, "benchmarks/bench_hellaswag.py", *p.hellaswag], needs_data=True)
    # priority order, since the budget skips from the end: the headline speed pair, a preempted
    # run continuing exactly, HellaSwag, then the rest of the matrix
    rest = ([*pair(large), ours("gpt2", mid), ours("modern", small), ours("modern", large)]
            if p.whole_plan else [ours("modern", small)])
    return [*pair(small), train, hellaswag, *rest, xl]


def select_parts(plan, parts_arg):
    wanted = {w.strip() for w in (parts_arg or "").split(",") if w.strip()}
    unknown = wanted - set(GROUPS) - {p.name for p in plan}
    if unknown:
        raise CheckError(f"--parts: unknown {', '.join(sorted(unknown))} for this --plan; use "
                         f"groups {', '.join(GROUPS)} or {', '.join(p.name for p in plan)}")
    return [p for p in plan if not wanted or p.group in wanted or p.name in wanted]


def blocked_parts(plan, data_problem, no_cuda=False):
    """{part name: why it cannot run at all}: no CUDA, or no data."""
    return {p.name: why for p in plan
            if (why := "torch sees no CUDA device (see env.json); use --smoke on a CPU" if no_cuda
                else p.needs_data and data_problem)}


# -----------------------------------------------------------------------------
# 3. the output folder: four files, every one rewritten whole after each part

OUTPUT_FILES = ("summary.md", "results.jsonl", "env.json", "logs.tar.gz")
ARCHIVE = "logs.tar.gz"
LOG_CAP_BYTES = 512 * 2**10  # per log in the archive: a few dozen cannot near 16 MiB


def read_capped(path, cap=LOG_CAP_BYTES):
    """A log's bytes with its middle cut out past `cap`: the start (command, config) and the end
    (the error, the result line) are what a reader needs."""
    data = Path(path).read_bytes()
    if len(data) <= cap:
        return data
    cut = f"\n[gpu_check: {len(data) - cap:,} bytes cut here]\n".encode()
    return data[:cap // 4] + cut + data[-(cap - cap // 4):]


def pack(folder):
    """Every file under folder, each capped -> the bytes of a .tar.gz."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            data = read_capped(path)
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.size, info.mtime = len(data), int(path.stat().st_mtime)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def clear_out(out):
    """Make --out hold nothing but what this run writes: anything else there would count against
    the 8 files that come back. Our own files from an earlier run are removed; others refused."""
    out.mkdir(parents=True, exist_ok=True)
    ours = set(OUTPUT_FILES) | {f"{n}.tmp" for n in OUTPUT_FILES}  # atomic_write's temp names
    others = sorted(p.name for p in out.iterdir() if p.name not in ours or not p.is_file())
    if others:
        raise CheckError(f"{out} holds {', '.join(others[:5])}, not gpu_check's output; "
                         "use an empty --out")
    for name in ours:
        (out / name).unlink(missing_ok=True)


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
    dest.mkdir(parents=True, exist_ok=True)
    if (src / ARCHIVE).is_file():
        with tarfile.open(src / ARCHIVE) as tar:
            tar.extractall(dest, filter="data")  # nothing outside dest, no links or devices
    for name in OUTPUT_FILES[:3]:
        if (src / name).is_file():
            shutil.copyfile(src / name, dest / name)
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


def run_process(cmd, log_path, env, timeout, grace=10, until=None):
    """Run cmd, its output appended to log_path, in a process group of its own (a stop reaches
    the whole tree, inductor's compile workers included). `until`, polled every 50 ms, ends it
    early: SIGTERM to the process, as a preempted job gets, and 120 s to exit. Whatever happens
    (a timeout, an Interrupted meanwhile) the group is gone on return: SIGTERM, then SIGKILL after
    `grace` s. -> (exit code, why it failed or None, whether until fired)"""
    deadline, fired = time.monotonic() + max(0.0, timeout), False
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                if until and not fired and until():
                    proc.send_signal(signal.SIGTERM)
                    fired, deadline = True, min(deadline, time.monotonic() + 120)
                time.sleep(0.05)
        finally:
            timed_out = proc.poll() is None
            if timed_out:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    why = f"timed out after {timeout:.0f} s" if timed_out else proc.returncode and (
        f"exit code {proc.returncode}")
    return proc.returncode, why or None, fired


def tail_text(text, n=15, width=300):
    return "\n".join(line[:width] for line in text.strip().splitlines()[-n:])


def last_json(text):
    """The last line of text that is a JSON object (the scripts print their result last)."""
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            if isinstance(obj := json.loads(line), dict):
                return obj
    return None


# the trainer's and the reference step's one line (torchrun may prefix a worker's lines)
OOM_LINE = re.compile(r"^(?:\[rank\d+\]:\s*)?(error: out of memory.*)$", re.M)
# an uncaught OutOfMemoryError (bench_hellaswag.py), or one torch.compile wrapped
OOM_TRACE = re.compile(r"^.*(?:OutOfMemoryError|CUDA out of memory).*$", re.M)


def outcome(why, log_path, seconds, **fields):
    """The record of a part: ok when `why` is None, else oom when its output says it ran out of
    memory (whatever the exit code: the OOM is the cause), else failed with the output's tail."""
    status, error = "ok", None
    if why:
        text = log_path.read_text(errors="replace")
        oom = OOM_LINE.findall(text) or OOM_TRACE.findall(text)
        status, error = (("oom", f"{oom[-1].strip()[:300]}\n({why})") if oom
                         else ("failed", f"{why}\n{tail_text(text)}"))
    return dict(status=status, seconds=round(seconds, 1), error=error, log=log_path.name, **fields)


class Estimator:
    """Static estimates, scaled within 0.5x..1.5x by how fast this machine was on the ok parts so
    far (most are dominated by torch.compile). A failed or oom part stopped at a point nobody
    knows: its seconds would make the card look fast, and an estimate too low is the costly error
    (a part cut at the budget)."""

    def __init__(self, estimates):
        self.estimates, self.actual, self.expected = estimates, 0.0, 0.0

    def __call__(self, part):
        factor = min(1.5, max(0.5, self.actual / self.expected)) if self.expected else 1.0
        return self.estimates[part.kind] * factor

    def observe(self, part, seconds):
        self.actual += seconds
        self.expected += self.estimates[part.kind]


RESERVE_S = 10  # kept back from the budget for the summary
TRAIN_GRACE_S = 40  # torchrun forwards SIGTERM to its workers and SIGKILLs them 30 s later


def fits(plan, i, estimate, left, statuses):
    """-> None if plan[i] may start with `left` seconds to go, else why it is skipped for time.
    The first of a matrix pair starts only if the pair fits; the second only if the first ran."""
    part = plan[i]
    if statuses.get(part.pair) == "skipped":
        return f"its pair {part.pair} was skipped"
    partner = next((p for p in plan[i + 1:] if p.name == part.pair), None)
    need = estimate(part) + (estimate(partner) if partner else 0)
    return None if need <= left else (
        f"needs ~{need:.0f} s" + (f" with its pair {partner.name}" if partner else "")
        + f", {max(0, left):.0f} s left")


class Runner:
    """Runs a plan part by part within the budget and keeps --out whole: each part's log and its
    run's small files go to a staging folder while it runs, packed into the archive after every
    part. dry=True (out None): decide the same way, each part taking its estimate on a clock."""

    def __init__(self, profile, data_dir, out, budget_s, dry=False):
        self.data_dir, self.budget_s = Path(data_dir).resolve(), budget_s
        self.out, self.t0 = out and Path(out), time.monotonic()
        self.dry_at = profile.estimates["env"] if dry else None  # a dry run's simulated clock
        self.estimate = Estimator(profile.estimates)
        self.records, self.env_info, self.summary_text = [], {}, ""
        self.running = None  # (part name, started at s, timeout s): the summary names it
        self.stopping = False
        self.stage = Path(tempfile.mkdtemp(prefix="gpu_check_logs_"))
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k not in (
            "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        self.env.update(TIKTOKEN_CACHE_DIR=str(self.data_dir / "tiktoken_cache"),
                        HELLASWAG_DIR=str(self.data_dir / "hellaswag"), HF_HUB_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")

    def elapsed(self):
        return self.dry_at if self.dry_at is not None else time.monotonic() - self.t0

    def left(self):
        return self.budget_s - RESERVE_S - self.elapsed()

    def close(self):
        shutil.rmtree(self.stage, ignore_errors=True)

    def on_signal(self, signum, frame):
        """SIGTERM/SIGINT: stop the current part and wind down (save() holds signals off, so the
        records and the files agree); a second signal does not cut the wind-down."""
        if not self.stopping:
            self.stopping = True
            raise Interrupted(f"signal {signum}")

    def run_all(self, plan, blocked):
        """blocked: {part name: why} for parts that cannot run at all."""
        for i, part in enumerate(plan):
            est = round(self.estimate(part))
            try:
                late = fits(plan, i, self.estimate, self.left(),
                            {r["part"]: r["status"] for r in self.records})
                if part.name in blocked:
                    self.record(part, "skipped", estimate_s=est, reason=blocked[part.name])
                elif late:
                    self.record(part, "skipped", estimate_s=est, for_time=True,
                                reason=f"over the {self.budget_s:.0f} s budget: {late}")
                elif self.dry_at is not None:
                    self.record(part, "ok", estimate_s=est, started_s=round(self.dry_at))
                    self.dry_at += self.estimate(part)
                else:
                    self.record(part, estimate_s=est, **self.run_part(part, est))
            except Interrupted as e:
                for rest in plan[i:]:
                    if rest.name in {r["part"] for r in self.records}:
                        continue  # its record was saved before the signal
                    why = f"gpu_check.py was interrupted ({e})"
                    if self.running and self.running[0] == rest.name:
                        self.record(rest, "failed", error=f"{why} during this part")
                    else:
                        self.record(rest, "skipped", reason=why)
                raise
            except Exception as e:  # a bug here must not cost the parts after it
                self.record(part, "failed", error=f"gpu_check.py: {type(e).__name__}: {e}")

    def run_part(self, part, est):
        # generous per part (a slow card still finishes), but a hang cannot eat the budget; a
        # kill's grace comes out of the slack before the call's own limit
        timeout = min(max(2.5 * est, est + 120), self.left())
        # the log exists before the part is named running: a signal from here on finds it, and
        # the archive holds the log of the part recorded failed
        log_path = self.stage / f"{part.name}.log"
        log_path.write_text("")
        self.running = (part.name, round(self.elapsed()), round(timeout))
        self.save()  # a call killed during this part returns a summary naming it
        t = time.monotonic()
        run = {"train": self.run_train, "compare": self.run_compare}.get(part.group,
                                                                         self.run_script)
        why, fields = run(part, log_path, timeout)
        rec = outcome(why, log_path, time.monotonic() - t, timeout_s=round(timeout), **fields)
        if rec["status"] == "ok":
            self.estimate.observe(part, rec["seconds"])
        return rec

    def record(self, part, status=None, **fields):
        rec = {"part": part.name, "group": part.group, "status": status or fields.pop("status"),
               "config": part.info, "command": shlex.join(part.cmd), **fields}
        self.records.append(rec)
        self.running = None
        self.save()
        if self.dry_at is not None:  # the plan's line
            print(f"{len(self.records):2d}. {part.name:22s} ~{rec.get('estimate_s', 0):4.0f} s  "
                  + (f"starts at {rec['started_s']:4.0f} s" if rec["status"] == "ok"
                     else f"SKIPPED ({note(rec)})") + f"  {shlex.join(part.cmd[1:])}")
        else:
            print(f"[gpu_check] {part.name}: {rec['status']}, {cell(rec, 'seconds:.0f') or '-'} s "
                  + note(rec), flush=True)

    def write(self, name, data):
        data = data.encode() if isinstance(data, str) else data
        train_gpt2.atomic_write(str(self.out / name), lambda tmp: Path(tmp).write_bytes(data))

    def save(self):
        """Rewrite the four files of --out, signals held off meanwhile: the archive first and the
        summary last, so the summary never names a part whose log is not in the archive yet."""
        if not self.out:
            return
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        try:
            self.write(ARCHIVE, pack(self.stage))
            self.write("results.jsonl", "".join(json.dumps(r) + "\n" for r in self.records))
            self.write("env.json", json.dumps(self.env_info, indent=1) + "\n")
            try:
                self.summary_text = summary_markdown(self.records, self.env_info, self.budget_s,
                                                     self.elapsed(), self.running)
            except Exception as e:  # a bug in the tables must not stop the run or lose statuses
                self.summary_text = "\n".join(
                    [f"# gpu_check: the summary failed ({type(e).__name__}: {e})", ""]
                    + [f"- {r['part']}: {r['status']} {note(r)}" for r in self.records]) + "\n"
            self.write("summary.md", self.summary_text)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)  # a signal held off arrives here

    def run_script(self, part, log_path, timeout):
        """A script that prints one JSON result line last and exits 0."""
        rc, why, _ = run_process(part.cmd, log_path, self.env, timeout)
        result = last_json(log_path.read_text(errors="replace"))
        why = why or ("exit code 0 but no JSON result line" if result is None else None)
        return why, dict(rc=rc, result=result)

    @contextlib.contextmanager
    def trainer_run(self, part):
        """-> (command, log_dir, keep): the trainer on the carried shards, writing into a temp
        folder (checkpoints are GBs: never under --out); its small files are copied to `keep`,
        packed into logs.tar.gz, whatever happens (an interrupt included)."""
        tmp, keep = Path(tempfile.mkdtemp(prefix="gpu_check_run_")), self.stage / part.name
        keep.mkdir(exist_ok=True)
        try:
            yield (part.cmd + ["--data_dir", str(self.data_dir / "shards"),
                               "--log_dir", str(tmp / "log")], tmp / "log", keep)
        finally:
            for name in ("log.txt", "config.json", "samples.txt"):
                if (tmp / "log" / name).is_file():
                    shutil.copyfile(tmp / "log" / name, keep / name)
            shutil.rmtree(tmp, ignore_errors=True)

    def run_compare(self, part, log_path, timeout):
        """One variant of the comparison: train, then its figures from log.txt and config.json."""
        with self.trainer_run(part) as (cmd, log_dir, _):
            rc, why, _ = run_process(cmd, log_path, self.env, timeout)
            return why, dict(rc=rc, result=None if why else compare.figures(log_dir))

    def run_train(self, part, log_path, timeout):
        """Run until log.txt has a train record stop_after steps past the first checkpoint,
        SIGTERM it, resume it (the same command + --resume) to the end, check the log."""
        spec, deadline = part.info, time.monotonic() + timeout
        result = {"max_steps": spec["max_steps"]}
        with self.trainer_run(part) as (cmd, log_dir, keep):
            def past_checkpoint():
                first = checkpoint_steps(log_dir)[:1]
                return bool(first) and (last_train_step(log_dir / "log.txt")
                                        >= first[0] + spec["stop_after"])

            rc, why, stopped = run_process(cmd, log_path, self.env, timeout, TRAIN_GRACE_S,
                                           until=past_checkpoint)
            result["stop_rc"] = rc
            timed_out = bool(why) and why.startswith("timed out")
            if stopped:  # its exit code is one of the checks
                why = "the stopped run did not exit in time after SIGTERM" if timed_out else None
            elif timed_out:
                why = f"no checkpoint and a train record {spec['stop_after']} steps past it"
            else:
                why = f"the first run ended ({why or 'exit code 0'}) before it could be stopped"
            if (log_dir / "log.txt").is_file():
                shutil.copyfile(log_dir / "log.txt", keep / "log_stopped.txt")
            if not why:
                result["resume_step"] = (checkpoint_steps(log_dir) or [None])[-1]
                rc, why, _ = run_process(cmd + ["--resume"], log_path, self.env,
                                         deadline - time.monotonic(), TRAIN_GRACE_S)
                result["resume_rc"] = rc
                why = why and f"the resumed run: {why}"
            if not why:
                result.update(analyse_train_run(log_dir, keep / "log_stopped.txt", spec,
                                                result["stop_rc"], result["resume_step"]))
                bad = [name for name, c in result["checks"].items() if not c["ok"]]
                why = f"checks failed: {', '.join(bad)}" if bad else None
        return why, dict(result=result)


# -----------------------------------------------------------------------------
# 5. checking the training log


def checkpoint_steps(log_dir):
    return [int(re.search(r"model_(\d+)\.pt$", p).group(1))
            for p in train_gpt2.list_checkpoints(str(log_dir))]


def last_train_step(log_path):
    """The newest train record of a log still being written (its last line may be half done)."""
    with contextlib.suppress(OSError):
        return max((s for s, name, _ in train_gpt2.read_log(log_path).records
                    if name == "train"), default=-1)
    return -1


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
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    twice = sorted(s for s, v in found.items() if len(v) > 1)
    return check(not (missing or extra or twice), f"{len(expected)} steps" if not (
        missing or extra or twice) else f"missing {missing[:10]}, unexpected {extra[:10]}, "
                                        f"logged twice {twice[:10]}")


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
    streams = {n: by_name(records, n) for n in ("train", "val", "hella", "tok/s", "mfu")}
    train = streams["train"]
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
        "val_at_expected_steps": check_schedule(streams["val"],
                                                due_steps(spec["val_every"], max_steps)),
        "hella_at_expected_steps": check_schedule(streams["hella"],
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
        vals = [v[0] for s, v in streams[name].items()
                if lo <= s < hi and s not in (0, resume_step)]
        return round(statistics.median(vals), 4) if vals else None

    def per_step(name):
        return {str(s): v[0] for s, v in sorted(streams[name].items())}

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
props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
print(json.dumps({"python": sys.version.split()[0], "torch": torch.__version__,
                  "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
                  "devices": [{"name": p.name, "capability": f"{p.major}.{p.minor}",
                               "memory_gib": round(p.total_memory / 2**30, 1)} for p in props]}))
"""
NVIDIA_SMI = ["nvidia-smi", "--format=csv",
              "--query-gpu=name,driver_version,memory.total,power.limit,clocks.max.sm"]


def collect_env(env, data_dir):
    """torch/CUDA/card from a subprocess (this process never creates a CUDA context); git, and
    the sources' hashes, which say what ran where the device's copy of the tree has no .git."""
    text = output_of([sys.executable, "-c", ENV_PROBE], env)
    info = {"cpus": os.cpu_count(), **(last_json(text) or {"probe_error": tail_text(text, 5)})}
    info["card"] = info["devices"][0]["name"] if info.get("devices") else "cpu"
    if shutil.which("nvidia-smi"):
        info["nvidia_smi"] = output_of(NVIDIA_SMI, timeout=30).strip()
    manifest = Path(data_dir) / MANIFEST
    if manifest.is_file():  # where git does not work, this says which commit made the data
        info["data_prepared_at"] = json.loads(manifest.read_text()).get("git")
    sources = sorted(REPO.glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
    info["sources_sha256"] = {str(p.relative_to(REPO)): hashlib.sha256(p.read_bytes()).hexdigest()
                              for p in sources}
    return dict(info, git=git_info())


def note(rec):
    text = rec.get("reason") or rec.get("error") or ""
    return text.splitlines()[0].replace("|", "/")[:160] if text else ""


def cell(rec, how):
    """One table cell of a record: how(rec), or "path[ / path]:spec" (dotted paths into the
    record, each formatted with spec, joined by " / "); empty where a value is missing."""
    if callable(how):
        return how(rec)
    paths, _, spec = how.partition(":")
    cells = []
    for path in paths.split(" / "):
        value = rec
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        cells.append("" if value is None else f"{value:{spec}}")
    return " / ".join(cells)


def table(columns, records):
    """One row per record: part and status, then columns [(header, how)], then seconds and the
    note; so every table says those four the same way."""
    columns = [("part", "part"), ("status", "status"), *columns, ("seconds", "seconds:.0f"),
               ("note", note)]
    return ["| " + " | ".join(header for header, _ in columns) + " |",
            "|" + " --- |" * len(columns),
            *("| " + " | ".join(str(cell(r, how)) for _, how in columns) + " |" for r in records)]


def span(name, spec=".3f"):
    """A column: first -> last of a result's list or {step: value}."""
    def first_last(rec):
        values = (rec.get("result") or {}).get(name) or []
        values = list(values.values()) if isinstance(values, dict) else values
        return f"{values[0]:{spec}} -> {values[-1]:{spec}}" if values else ""
    return first_last


def passed(rec):
    checks = (rec.get("result") or {}).get("checks")
    return f"{sum(c['ok'] for c in checks.values())}/{len(checks)}" if checks else ""


MATRIX_COLUMNS = [("impl", "config.impl"), ("arch", "config.arch"),
                  ("micro-batch", "config.micro_batch"), ("tokens/s", "result.tokens_per_s:,.0f"),
                  ("vs reference", "vs_reference"), ("MFU", "result.mfu:.1%"),
                  ("step ms", "result.step_ms:.1f"),
                  ("peak / estimate GiB", "result.peak_mem_gib / result.estimate_gib:.2f"),
                  ("compile s", "result.compile_s:.1f")]
TRAIN_COLUMNS = [
    ("steps", "config.max_steps"), ("checks", passed),
    ("stopped after / resumed at", "result.stopped_after_step / result.resume_step"),
    ("stop rc / resume rc", "result.stop_rc / result.resume_rc"),
    ("train loss", span("train_loss")), ("val loss", span("val_loss")),
    ("HellaSwag", span("hella", ".4f")), ("median tok/s", "result.tok_per_s_median:,.0f"),
    ("tok/s before stop / after resume",
     "result.tok_per_s_before_stop / result.tok_per_s_after_resume:,.0f"),
    ("MFU", "result.mfu_median:.1%")]
HELLASWAG_COLUMNS = [
    ("examples", "result.examples"), ("dtype", "result.dtype"),
    ("reference s", "result.reference.seconds:.1f"), ("batched s", "result.batched.seconds:.2f"),
    ("batched first call s", "result.batched.first_call_seconds:.1f"),
    ("speedup x", "result.speedup:.1f"),
    ("acc_norm ref / batched", "result.reference.acc_norm / result.batched.acc_norm:.4f"),
    ("predictions differing", "result.predictions_differing")]


def matrix_lines(records):
    """By micro-batch, each config beside the reference it is compared with; then every
    reference pair that is not both ok, and why."""
    ref = {r["config"]["micro_batch"]: r for r in records if r["config"]["impl"] == "reference"}
    ours = {r["config"]["micro_batch"]: r for r in records
            if r["config"]["impl"] == "ours" and r["config"]["arch"] == "gpt2"}
    rows = []
    for r in sorted(records, key=lambda r: (r["config"]["micro_batch"],
                                            r["config"]["arch"] != "gpt2",
                                            r["config"]["impl"] != "ours")):
        mate = ref.get(r["config"]["micro_batch"])
        ok = r["config"]["impl"] == "ours" and mate and r["status"] == mate["status"] == "ok"
        ratio = r["result"]["tokens_per_s"] / mate["result"]["tokens_per_s"] if ok else None
        rows.append(dict(r, vs_reference=f"{ratio:.3f}x" if ok else ""))
    missing = []
    for mb in sorted(ref):
        pair = [r for r in (ours.get(mb), ref[mb]) if r]
        if len(pair) < 2 or any(r["status"] != "ok" for r in pair):
            missing.append(f"- b{mb}: " + ", ".join(
                f"{r['part']} {r['status']}" + (f" ({note(r)})" if r["status"] != "ok" else "")
                for r in pair))
    return table(MATRIX_COLUMNS, rows) + [""] + (
        ["Reference pairs not both ok, so without a ratio:", *missing] if missing
        else ["Every reference pair ran."])


def train_lines(records):
    lines = table(TRAIN_COLUMNS, records)
    for res in (r.get("result") or {} for r in records):
        lines += [""] + [f"- {'PASS' if c['ok'] else 'FAIL'} {name}: {c['detail']}"
                         for name, c in res.get("checks", {}).items()]
        if res.get("val_loss"):
            lines.append("- val loss: " + ", ".join(f"{s}: {v:.3f}"
                                                    for s, v in res["val_loss"].items()))
    return lines


def compare_lines(records):
    cfg = records[0]["config"]
    return [f"{cfg['max_steps']} steps of {cfg['total_batch']:,} tokens "
            f"({cfg['max_steps'] * cfg['total_batch'] / 1e6:.2f}M tokens) each, validation every "
            f"{cfg['val_every']} steps on {cfg['val_tokens']:,} held-out tokens, HellaSwag on "
            f"the first {cfg['hellaswag_limit']} examples at the end.", "",
            *compare.comparison([(r["config"]["variant"], r["status"], r.get("result"),
                                  shlex.join(["python", *shlex.split(r["command"])[1:]]))
                                 for r in records])]


SECTIONS = [("matrix", "Trainer speed: `train_gpt2.py --benchmark` vs the plain reference step",
             matrix_lines),
            ("train", "Real-data run stopped with SIGTERM and resumed (torchrun, 1 process)",
             train_lines),
            ("hellaswag", "HellaSwag: one-example reference loop vs batched evaluator",
             lambda records: table(HELLASWAG_COLUMNS, records)),
            ("compare", "Real text: variants at equal tokens (benchmarks/compare.py)",
             compare_lines)]

STATUS_MEANING = {
    "ok": "ran to the end; its figures are in the tables and results.jsonl",
    "failed": "an exit code, a timeout, no result line or a failed train check: see the note, "
              "and the part's log in logs.tar.gz",
    "oom": "CUDA out of memory (the card is too small for this micro-batch); the plan went on",
    "skipped": "did not run: over the time budget, data or CUDA missing, or gpu_check.py was "
               "interrupted (the note says which)",
}


def summary_markdown(records, env, budget_s, elapsed, running=None):
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    if not commit:  # no git on the device: the commit the carried data was prepared at
        prepared = (env.get("data_prepared_at") or {}).get("commit")
        commit = f"{prepared[:12]} (data prepared at)" if prepared else "?"
    title = (f"# gpu_check SMOKE RUN (tiny model on the CPU, not a GPU result): {env.get('card')}"
             if env.get("smoke") else f"# gpu_check: {env.get('card', '?')}")
    plan = env.get("plan", "check")
    lines = [f"{title}, torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}", "",
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}; plan {plan}; commit {commit}; budget "
             f"{budget_s:.0f} s, used {elapsed:.0f} s; " + ", ".join(
                 f"{sum(r['status'] == s for r in records)} {s}" for s in STATUS_MEANING), ""]
    if running:
        name, since, timeout = running
        lines += [f"**Running now: {name}** (started at {since} s, timeout {timeout} s). A "
                  "summary that still says so is from a call that ended during this part; its "
                  "log in logs.tar.gz is still empty (a log is packed when its part ends).", ""]
    for group, title, section in SECTIONS:
        mine = [r for r in records if r["group"] == group]
        if mine:  # a --parts subset leaves the others out
            lines += [f"## {title}", ""] + section(mine) + [""]
    not_ok = [f"- {r['part']} ({r['status']}): {note(r)}" for r in records if r["status"] != "ok"]
    if not_ok:
        lines += ["## Not ok", ""] + not_ok + [""]
    late = [r["part"] for r in records if r.get("for_time")]
    if late:
        lines += ["Skipped for time; the next call runs them: `python benchmarks/gpu_check.py run "
                  "--data .carry/gpu_check --out $OUT/gpu_check"
                  + (f" --plan {plan}" if plan != "check" else "") + f" --parts {','.join(late)}`",
                  ""]
    return "\n".join(lines + ["## Statuses and files", ""]
                     + [f"- **{s}**: {m}" for s, m in STATUS_MEANING.items()]
                     + ["- files: summary.md, results.jsonl (one object per part), env.json, "
                        "logs.tar.gz (each part's `<part>.log` and its run's files); `python "
                        "benchmarks/gpu_check.py unpack DIR` writes the folder to commit", ""])


# -----------------------------------------------------------------------------
# 7. command line


def run(args):
    profile = SMOKE if args.smoke else GPU
    plan = select_parts(build_plan(profile, args.plan), args.parts)
    data_problem = verify_data(args.data, args.smoke)
    if args.dry_run:
        print(f"data: {data_problem or 'ok'}")  # the plan below is what a run with data does
        return dry_run(plan, profile, args)
    if not args.out:
        raise CheckError("run: --out is required (except with --dry_run)")
    clear_out(Path(args.out))
    runner = Runner(profile, args.data, args.out, args.budget_s)
    runner.env_info = {"started": now(), "plan": args.plan, "smoke": args.smoke}
    handlers = {s: signal.signal(s, runner.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.save()  # the four files exist from the start: a call killed in the probe says so
        runner.env_info.update(collect_env(runner.env, args.data), data_problem=data_problem)
        print(f"[gpu_check] {runner.env_info['card']}, torch {runner.env_info.get('torch')}, "
              f"{len(plan)} parts, budget {args.budget_s:.0f} s", flush=True)
        no_cuda = profile.device == "cuda" and not runner.env_info.get("cuda_available")
        runner.run_all(plan, blocked_parts(plan, data_problem, no_cuda))
    except Interrupted:
        pass
    finally:
        runner.stopping = True  # from here on a signal waits: the last save is a second away
        runner.save()
        runner.close()
        for s, handler in handlers.items():
            signal.signal(s, handler)
    print(runner.summary_text)
    return exit_code(runner.records)


def exit_code(records):
    """0 when a part ran ok and none failed: a skip or an OOM is a finding about the window or the
    card, not a fault of the code; a run where nothing ran ok is not a result."""
    statuses = {r["status"] for r in records}
    return 0 if "ok" in statuses and "failed" not in statuses else 1


def dry_run(plan, profile, args):
    """The plan as the run would start it: order, estimate, when each part would start, whether
    it fits. The run rescales the estimates by the parts it has finished, so later lines move."""
    limit = args.budget_s - RESERVE_S
    print(f"plan {args.plan} ({'smoke, CPU' if args.smoke else 'GPU'}): budget {args.budget_s:.0f}"
          f" s, {limit:.0f} s for the parts after {RESERVE_S} s kept for the summary")
    if not args.smoke:
        print(f"estimates assume a fresh process starts in ~{STARTUP_S} s and compiles GPT-2 124M "
              f"in ~{COMPILE_S} s (an H100 takes 40-90 s); the run rescales them 0.5x-1.5x by the "
              "finished ok parts")
    print(f" 0. {'env probe':22s} ~{profile.estimates['env']:4.0f} s  starts at    0 s")
    runner = Runner(profile, args.data, None, args.budget_s, dry=True)
    runner.run_all(plan, blocked_parts(plan, None))
    runner.close()
    late = [r["part"] for r in runner.records if r.get("for_time")]
    print(f"estimated total: {runner.dry_at:.0f} s of {limit:.0f} s; "
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
        if args.command == "run":
            return run(args)
        {"prepare": prepare, "unpack": unpack}[args.command](args)
        return 0
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
