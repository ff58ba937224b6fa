"""
One command for a short GPU window: trainer speed vs a plain reference step, HellaSwag eval speed,
and a real-data training run that is stopped with SIGTERM and resumed. Every part is a subprocess
with its own timeout; a failing part is recorded and the run goes on; a part that does not fit the
time left is skipped, and the summary says so. Results land in one folder.

How a GPU session runs it (device tool, one call):

    # here, on the CPU, once (writes ~25 MB: token shards, tiktoken's GPT-2 files, HellaSwag val)
    python benchmarks/gpu_check.py prepare --out .carry/gpu_check
    # the device call: carry [".carry"], timeout_s 600, command
    python benchmarks/gpu_check.py run --data .carry/gpu_check --out $OUT/gpu_check
    # afterwards, here: commit the returned folder as benchmarks/results/<yyyymmdd>-<card>/
    #   e.g. benchmarks/results/20260301-h100/  (summary.md, results.jsonl, env.json, *.log, train-resume/)

The default --budget_s 540 (9 minutes) covers everything, the environment probe included; leave
~60 s between it and the device call's own limit. `run --dry_run` prints the plan with estimated
seconds; `--parts matrix,hellaswag,train` (groups or part names) runs a subset; `--smoke` runs
the same code paths with a tiny model on the CPU in well under a minute (`prepare --smoke` makes a
smaller data folder for it). No network is needed: the subprocesses get TIKTOKEN_CACHE_DIR and
HELLASWAG_DIR pointing into --data, and HF_HUB_OFFLINE=1.

Parts, in priority order: gpt2 b16 + reference b16, gpt2 b64 + reference b64, hellaswag,
train-resume, then gpt2 b32, modern b16, modern b64. Estimated on an H100/H200 (a fresh process
per part, so compile dominates): ~50 s per matrix config, ~160 s hellaswag, ~150 s train-resume,
~510 s for the first six; the estimates are rescaled by the measured speed of the parts done so
far, so the last three run when the card compiles faster than assumed, and are skipped otherwise.
  matrix     `train_gpt2.py --benchmark` side by side with benchmarks/bench_reference_step.py
             (build-nanogpt's loop around our model): tokens/s, MFU, step ms, peak GiB, compile s,
             and the ratio of each config to the reference at the same micro-batch.
  hellaswag  benchmarks/bench_hellaswag.py on the full val set (reference loop vs batched).
  train      torchrun (1 process) on the carried shards: GPT-2 124M, 2 accumulation micro-steps,
             val / HellaSwag / samples / checkpoints; SIGTERM a few steps past the first checkpoint,
             then the same command + --resume to the end; the log is then checked (one train record
             per step, val/hella at the expected steps, finite values, a continuous loss curve
             across the resume, the final checkpoint). Checkpoints go to a temp dir, not to --out.
Outputs in --out: results.jsonl (one object per part: status ok/failed/skipped, seconds, the
part's JSON result, the error tail), <part>.log (its stdout+stderr), env.json (torch, CUDA, card,
nvidia-smi, git commit, python), summary.md (rewritten after every part, printed at the end).
Exit code 0 when at least one part ran and none failed.
"""

import argparse
import glob
import hashlib
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
    estimates: dict  # seconds per part kind, before anything has been measured


GPU = Profile(
    device="cuda", dtype="bf16", compile=1, model=[], seq_len=1024,
    bench_steps=24,  # 16 steady steps; 24 steps cost < 4 s even at micro-batch 64
    batches=(16, 32, 64),
    hellaswag=["--device", "cuda", "--compile", "1"],
    train=dict(micro_batch=16, total_batch=32768, max_steps=80, warmup_steps=10, checkpoint_every=20,
               val_every=20, val_tokens=65536, hellaswag_every=40, hellaswag_limit=500, sample_every=40,
               num_samples=2, sample_tokens=32),
    stop_after=2,
    # a fresh process: ~10 s start + CUDA init, ~30-40 s compile (fwd+bwd of 124M), < 5 s of steps;
    # hellaswag: ~100 s reference loop + compiles of the batched shapes; train: two processes, the
    # second one (and the train graph of the first) hit the inductor on-disk cache
    estimates={"ours": 50, "reference": 50, "hellaswag": 160, "train": 150},
)

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64"]
SMOKE = Profile(
    device="cpu", dtype="fp32", compile=0, model=TINY + ["--block_size", "64"], seq_len=64,
    bench_steps=3, batches=(2, 4, 8),
    hellaswag=["--device", "cpu", "--compile", "0", "--limit", "16", *TINY],  # block 1024: long rows fit
    train=dict(micro_batch=2, total_batch=256, max_steps=20, warmup_steps=2, checkpoint_every=5,
               val_every=5, val_tokens=1024, hellaswag_every=10, hellaswag_limit=8, sample_every=10,
               num_samples=1, sample_tokens=8),
    stop_after=2,
    estimates={"ours": 3, "reference": 3, "hellaswag": 6, "train": 12},
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

    t = p.train
    train_cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train_gpt2.py",
                 "--arch", "gpt2", "--seq_len", str(p.seq_len), "--device", p.device, "--dtype", p.dtype,
                 "--compile", str(p.compile), *p.model, *[x for k, v in t.items() for x in (f"--{k}", str(v))]]
    small, mid, large = p.batches
    return [
        ours("gpt2", small), reference(small), ours("gpt2", large), reference(large),
        Part("hellaswag", "hellaswag", "hellaswag", [py, "benchmarks/bench_hellaswag.py", *p.hellaswag],
             needs_data=True),
        Part("train-resume", "train", "train", train_cmd, needs_data=True,
             info=dict(t, stop_after=p.stop_after)),
        ours("gpt2", mid), ours("modern", small), ours("modern", large),
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
# 3. running parts: subprocesses with timeouts, logs, the time budget


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


class Estimator:
    """Static estimates, scaled by how fast this machine turned out to be on the parts so far
    (most parts are dominated by the same thing, torch.compile), within 0.5x..1.5x."""

    def __init__(self, estimates):
        self.estimates = estimates
        self.actual = self.expected = 0.0

    def __call__(self, part):
        factor = self.actual / self.expected if self.expected else 1.0
        return self.estimates[part.kind] * min(1.5, max(0.5, factor))

    def observe(self, part, seconds):
        self.actual += seconds
        self.expected += self.estimates[part.kind]


RESERVE_S = 10  # kept back from the budget for the summary


class Runner:
    def __init__(self, profile, data_dir, out, budget_s):
        self.profile, self.data_dir, self.out, self.budget_s = profile, Path(data_dir), Path(out), budget_s
        self.t0 = time.monotonic()
        self.env = child_env(data_dir)
        self.estimate = Estimator(profile.estimates)
        self.records = []
        self.env_info = {}

    def left(self):
        return self.budget_s - RESERVE_S - (time.monotonic() - self.t0)

    def grace(self, part):
        return 40 if part.group == "train" else 10

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
                    run = self.run_train if part.group == "train" else self.run_command
                    rec = run(part, timeout)
                    if rec["status"] == "ok":
                        self.estimate.observe(part, rec["seconds"])
                    self.record(part, estimate_s=round(est), timeout_s=round(timeout), **rec)
            except Interrupted as e:
                self.record(part, "failed", error=f"gpu_check.py was interrupted ({e}) during this part")
                for later in plan[i + 1:]:
                    self.record(later, "skipped", reason=f"gpu_check.py was interrupted ({e})")
                raise
            except Exception as e:  # a bug here must not cost the parts after it
                self.record(part, "failed", error=f"gpu_check.py: {type(e).__name__}: {e}")

    def record(self, part, status=None, **fields):
        rec = {"part": part.name, "group": part.group, "status": status or fields.pop("status"),
               "config": part.info, "command": shlex.join(part.cmd), **fields}
        self.records.append(rec)
        with open(self.out / "results.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        write_text(self.out / "summary.md", summary_markdown(self.records, self.env_info, self.budget_s,
                                                              time.monotonic() - self.t0))
        print(f"[gpu_check] {part.name}: {rec['status']}" + (f" ({rec['seconds']:.0f} s)" if "seconds" in rec else "")
              + (f" - {rec['reason']}" if rec.get("reason") else ""), flush=True)

    def run_command(self, part, timeout):
        log_path = self.out / f"{part.name}.log"
        log_path.write_text("")
        t = time.monotonic()
        rc, timed_out = run_logged(part.cmd, log_path, timeout, self.env, self.grace(part))
        seconds = time.monotonic() - t
        text = log_path.read_text(errors="replace")
        result = last_json(text)
        ok = rc == 0 and not timed_out and result is not None
        error = None
        if not ok:
            why = f"timed out after {timeout:.0f} s" if timed_out else f"exit code {rc}"
            if rc == 0 and not timed_out and result is None:
                why = "exit code 0 but no JSON result line"
            error = f"{why}\n{tail_text(text)}"
        return dict(status="ok" if ok else "failed", seconds=round(seconds, 1), rc=rc, timed_out=timed_out,
                    result=result, error=error, log=log_path.name)

    # --- the real-data run: start, SIGTERM past a checkpoint, resume, check
    def run_train(self, part, timeout):
        spec = part.info
        deadline = time.monotonic() + timeout
        log_path = self.out / f"{part.name}.log"
        log_path.write_text("")
        keep = self.out / part.name  # the small files of the run come back with the results
        keep.mkdir(exist_ok=True)
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
                return self.train_failed(why, t, result, log_path, log_dir, keep)
            ckpts = list_checkpoints(log_dir)
            result["resume_step"] = ckpts[-1] if ckpts else None
            t2 = time.monotonic()
            resume_rc, timed_out = run_logged(cmd + ["--resume"], log_path, deadline - time.monotonic(),
                                              self.env, self.grace(part))
            result.update(resume_rc=resume_rc, phase2_s=round(time.monotonic() - t2, 1))
            if timed_out or resume_rc != 0:
                why = "the resumed run " + ("timed out" if timed_out else f"failed with exit code {resume_rc}")
                return self.train_failed(why, t, result, log_path, log_dir, keep)
            result.update(analyse_train_run(log_dir, keep / "log_stopped.txt", spec, stop_rc, result["resume_step"]))
            bad = [name for name, c in result["checks"].items() if not c["ok"]]
            save_run_files(log_dir, keep)
            return dict(status="failed" if bad else "ok", seconds=round(time.monotonic() - t, 1), result=result,
                        error=f"checks failed: {', '.join(bad)}" if bad else None, log=log_path.name)
        finally:
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

    def train_failed(self, why, t, result, log_path, log_dir, keep):
        save_run_files(log_dir, keep)
        text = log_path.read_text(errors="replace")
        return dict(status="failed", seconds=round(time.monotonic() - t, 1), result=result,
                    error=f"{why}\n{tail_text(text)}", log=log_path.name)


def write_text(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)  # a reader (or a kill) never sees half a summary


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


def summary_markdown(records, env, budget_s, elapsed):
    counts = Counter(r["status"] for r in records)
    commit = ((env.get("git") or {}).get("commit") or "")[:12]
    if not commit:  # no git on the device: the commit the carried data was prepared at
        prepared = ((env.get("data_prepared_at") or {}).get("git") or {}).get("commit")
        commit = f"{prepared[:12]} (data prepared at)" if prepared else "?"
    head = [f"# gpu_check: {env.get('card', '?')}, torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}",
            "", f"{time.strftime('%Y-%m-%d %H:%M %Z')}; commit {commit}; "
            f"budget {budget_s:.0f} s, used {elapsed:.0f} s; "
            + ", ".join(f"{counts[s]} {s}" for s in ("ok", "failed", "skipped") if counts[s]), ""]
    sections = [("matrix", "Trainer speed: `train_gpt2.py --benchmark` vs the plain reference step", matrix_rows),
                ("hellaswag", "HellaSwag: one-example reference loop vs batched evaluator", hellaswag_rows),
                ("train", "Real-data run stopped with SIGTERM and resumed (torchrun, 1 process)", train_rows)]
    body = []
    for group, title, rows in sections:
        if any(r["group"] == group for r in records):  # a --parts subset leaves the others out
            body += [f"## {title}", ""] + rows(records, env) + [""]
    not_run = [f"- {r['part']} ({r['status']}): {(r.get('reason') or r.get('error') or '').splitlines()[0]}"
               for r in records if r["status"] != "ok"]
    if not_run:
        body += ["## Skipped and failed", ""] + not_run + [""]
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.jsonl").write_text("")  # this run's results only
    runner = Runner(profile, args.data, out, args.budget_s)

    def interrupted(signum, frame):
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    try:
        runner.env_info = collect_env(runner.env, args.data)
        runner.env_info["data_problem"] = data_problem
        write_text(out / "env.json", json.dumps(runner.env_info, indent=1) + "\n")
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
    summary = summary_markdown(runner.records, runner.env_info, args.budget_s, time.monotonic() - runner.t0)
    write_text(out / "summary.md", summary)
    print(summary)
    statuses = {r["status"] for r in runner.records}
    return 0 if "ok" in statuses and "failed" not in statuses else 1  # skips alone are fine, nothing run is not


def dry_run(plan, profile, args, data_problem):
    est, total = Estimator(profile.estimates), 0.0
    print(f"plan ({'smoke, CPU' if args.smoke else 'GPU'}), budget {args.budget_s:.0f} s "
          f"(minus {RESERVE_S} s for the summary); data: {data_problem or 'ok'}")
    for i, part in enumerate(plan, 1):
        e = est(part)
        fits = total + e <= args.budget_s - RESERVE_S
        total += e if fits else 0
        print(f"{i:2d}. {part.name:20s} ~{e:4.0f} s  {'runs' if fits else 'SKIPPED (over budget)':22s} "
              f"{shlex.join(part.cmd[1:])}")
    print(f"estimated total: {total:.0f} s of the parts that fit")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description="GPU check: prepare the carried data here, run it on the GPU.")
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="make the data folder a GPU call carries (runs on the CPU)")
    prep.add_argument("--out", required=True)
    prep.add_argument("--smoke", action="store_true", help="a smaller folder, for run --smoke")
    prep.add_argument("--shared", default=str(SHARED_DATA), help="the offline data (corpus/, tiktoken_cache/, hellaswag/)")
    r = sub.add_parser("run", help="run the parts and write results.jsonl, env.json, summary.md into --out")
    r.add_argument("--data", default=str(REPO / ".carry" / "gpu_check"))
    r.add_argument("--out", default=None)
    r.add_argument("--budget_s", type=float, default=540, help="wall-clock seconds for everything")
    r.add_argument("--smoke", action="store_true", help="tiny model on the CPU: the same code paths in < 1 min")
    r.add_argument("--parts", default=None, help="comma-separated groups (matrix, hellaswag, train) or part names")
    r.add_argument("--dry_run", action="store_true", help="print the plan with estimated seconds and exit")
    args = p.parse_args(argv)
    try:
        if args.command == "prepare":
            prepare(args)
            return 0
        return run(args)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
