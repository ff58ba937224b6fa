"""
AdamW vs Muon at equal steps and tokens on real text, with the real trainer, on the CPU; and one
design question: should Muon orthogonalise the fused q/k/v weight (attn.c_attn, (3C, C)) as ONE
matrix (what train_gpt2.py does) or as THREE (C, C) matrices (what modded-nanogpt does)?

This is a FIRST SIGN, NOT A VERDICT: a 4-layer, 128-wide model trained for a few tens of thousands
of tokens on a 2-core CPU shared with other work. Its embedding (tied head) holds most of the
parameters and stays with AdamW in both arms, and the runs stop long before the block matrices,
where Muon acts, matter much. Only GPU runs of the 124M model can settle what the defaults are.

    export TIKTOKEN_CACHE_DIR=/work/shared/data/tiktoken_cache
    nohup python benchmarks/bench_muon.py > /tmp/bench_muon.out 2>&1 &     # ~20-30 min
    python benchmarks/bench_muon.py --quick                                 # smoke run of the script, ~2 min

What it does:
  1. Tokenizes the first --max_tokens tokens of --source with fineweb.py into --work/shards: shard 0
     (--shard_size tokens) is the val shard, the rest train shards. fineweb.py itself reuses
     finished output ("nothing to do").
  2. Trains with `python train_gpt2.py ...` as a subprocess (--device cpu, fp32, no compile), every
     run the same model, batch, steps, warmup+cosine and val set:
       - AdamW at --adamw_lrs; the best one by final val loss is "the AdamW LR";
       - Muon with --max_lr (its AdamW part: embeddings, gains, biases) at that LR and --muon_lr at
         --muon_mults times it;
       - the split-q/k/v variant at the best Muon LR: `bench_muon.py --worker split_qkv -- ARGS`
         patches CausalSelfAttention, only in that subprocess, so that c_attn is three
         nn.Linear(C, C) computing the same function, checks that at the same seed it starts from
         the very same weights as the fused model, then calls train_gpt2.main(ARGS);
       - while the --budget_min allows: fused, split and AdamW again at the second --seeds seed,
         --arch modern at the best LR of each optimizer, and the other Muon LRs at the second seed.
     A sweep whose best LR is at its edge gets one more point beyond that edge (budget allowing).
  3. Appends one JSON line per run to benchmarks/results/muon_cpu/<yyyymmdd>.jsonl (--quick: to
     --work) and prints a markdown table. Wall seconds depend on what else the machine runs (see
     "loadavg" in each record); the losses do not: with 1 thread the same command gave the same
     val curve (checked once, muon_split_x2_s42 rerun). A finished run folder in --work is reused
     on a rerun and not written to the results file again.
"""

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from results.write_training_params import parse_log  # noqa: E402  (the log's one parser)

TRAINER = REPO / "train_gpt2.py"
RESULTS_DIR = REPO / "benchmarks" / "results" / "muon_cpu"

# The model and the run every variant shares. The tied 50304 x 128 embedding costs far more per
# token than the 4 blocks, so the width barely changes the speed; 128 keeps the blocks (what Muon
# trains) from being a rounding error. 250 steps of 256 tokens take ~2 min on one loaded core.
MODEL = ["--n_layer", "4", "--n_head", "4", "--n_embd", "128", "--block_size", "64", "--seq_len", "64"]
CPU_FP32 = ["--device", "cpu", "--dtype", "fp32", "--compile", "0"]
NO_EXTRAS = ["--hellaswag_every", "0", "--sample_every", "0", "--checkpoint_every", "0"]


def find_corpus():
    """The shared OpenStax file, beside the checkout or inside it. OpenStax alone because its
    documents are shuffled across books, so the first ones (the val shard) and the rest (train)
    come from the same mix; the FineWeb file is another register and would land in one split."""
    for root in (REPO / "shared", REPO.parent / "shared"):
        path = root / "data" / "corpus" / "openstax_textbooks_ccby.jsonl.gz"
        if path.exists():
            return str(path)
    return None


def get_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--worker", choices=["split_qkv"], help="internal: run the trainer with a patched model (args after --)")
    p.add_argument("--work", default="/tmp/bench_muon", help="shards and run folders go here (not in the repo)")
    p.add_argument("--source", nargs="+", default=[find_corpus()], help="text for fineweb.py --source")
    p.add_argument("--shard_size", type=int, default=500_000, help="tokens per shard; shard 0 is the val shard")
    p.add_argument("--max_tokens", type=int, default=2_500_000, help="tokens tokenized in total (val + train)")
    p.add_argument("--max_steps", type=int, default=250)
    p.add_argument("--warmup_steps", type=int, default=25)
    p.add_argument("--total_batch", type=int, default=256, help="tokens per step")
    p.add_argument("--micro_batch", type=int, default=4)
    p.add_argument("--val_every", type=int, default=25)
    p.add_argument("--val_tokens", type=int, default=4096)
    p.add_argument("--adamw_lrs", default="1e-3,3e-3,6e-3", help="AdamW peak LRs to sweep")
    p.add_argument("--muon_mults", default="1,2,4", help="--muon_lr values, as multiples of the best AdamW LR")
    p.add_argument("--seeds", default="1337,42", help="first: every run; second: the fused/split repeat")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run. 1: on this 2-core VM under other people's load, 2 threads "
                        "swung between 360 and 1460 tok/s, 1 thread stayed at 620-830 and leaves a core free")
    p.add_argument("--budget_min", type=float, default=30, help="optional runs start only if they fit in this")
    p.add_argument("--out", default=None, help="results file (default: benchmarks/results/muon_cpu/<yyyymmdd>.jsonl)")
    p.add_argument("--quick", action="store_true", help="smoke run of this script: 8 steps, 2 LRs each, results in --work")
    args = p.parse_args(argv)
    if args.quick:
        args.max_steps, args.warmup_steps, args.val_every, args.val_tokens = 8, 2, 4, 512
        args.adamw_lrs, args.muon_mults, args.budget_min = "1e-3,3e-3", "1,2", 6
        args.work = os.path.join(args.work, "quick")
    args.adamw_lrs = [float(x) for x in args.adamw_lrs.split(",")]
    args.muon_mults = [float(x) for x in args.muon_mults.split(",")]
    args.seeds = [int(x) for x in args.seeds.split(",")]
    if args.out is None:
        folder = args.work if args.quick else RESULTS_DIR
        args.out = os.path.join(folder, time.strftime("%Y%m%d") + ".jsonl")
    return args


# -----------------------------------------------------------------------------
# the split-q/k/v worker (runs inside its own subprocess only)


def patch_split_qkv(tg):
    """Give CausalSelfAttention three (C, C) q/k/v weights. Its forward stays the trainer's own:
    it calls self.c_attn(x).split(C, dim=2), so c_attn becomes a module that concatenates three
    projections, the same function as nn.Linear(C, 3C). muon_params() picks the three weights up
    (2-D, inside transformer.h.), so Muon orthogonalises each on its own."""
    import torch
    from torch import nn

    class SplitQKV(nn.Module):
        def __init__(self, n_embd, bias):
            super().__init__()
            self.q = nn.Linear(n_embd, n_embd, bias=bias)
            self.k = nn.Linear(n_embd, n_embd, bias=bias)
            self.v = nn.Linear(n_embd, n_embd, bias=bias)

        def forward(self, x):
            return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def __init__(self, config):
        # the trainer's __init__ with c_attn split; check_split_qkv catches any drift from it
        nn.Module.__init__(self)
        assert config.n_embd % config.n_head == 0
        bias = config.arch == "gpt2"
        self.n_head = config.n_head
        self.c_attn = SplitQKV(config.n_embd, bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.c_proj.RESIDUAL_PROJECTION = True

    tg.CausalSelfAttention.__init__ = __init__


def split_layout(state):
    """A fused model's state dict with each c_attn.X cut into c_attn.{q,k,v}.X (its row blocks)."""
    out = {}
    for name, t in state.items():
        if ".attn.c_attn." in name:
            for m, part in zip("qkv", t.chunk(3)):
                out[name.replace(".c_attn.", f".c_attn.{m}.")] = part
        else:
            out[name] = t
    return out


def check_split_qkv(tg, trainer_argv):
    """Build the run's model fused, then split, at the run's seed: -> (same init, max |logit diff|
    with the fused weights loaded). Raises if the two are not the same function, since then the
    comparison would be of two models, not of two ways to orthogonalise one."""
    import torch

    args = tg.get_args(trainer_argv)
    tg.resolve_defaults(args, 1)
    config = tg.model_config_from_args(args)
    torch.manual_seed(args.seed)
    fused = tg.GPT(config)
    patch_split_qkv(tg)
    torch.manual_seed(args.seed)
    split = tg.GPT(config)
    expected, actual = split_layout(fused.state_dict()), split.state_dict()
    if expected.keys() != actual.keys():
        raise RuntimeError(f"split model's parameters differ: {sorted(expected.keys() ^ actual.keys())}")
    same_init = all(torch.equal(expected[k], actual[k]) for k in expected)
    split.load_state_dict(expected)  # the same weights, so the logits must agree
    x = torch.randint(0, 50257, (2, min(32, config.block_size)), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (fused(x)[0] - split(x)[0]).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"split q/k/v model computes another function (max |logit diff| {diff:.3g})")
    return same_init, diff


def run_worker(trainer_argv):
    import train_gpt2 as tg

    same_init, diff = check_split_qkv(tg, trainer_argv)  # leaves the patch in place
    print("split_qkv check: " + json.dumps({"same_init_as_fused": same_init, "max_logit_diff": diff}), flush=True)
    return tg.main(trainer_argv)


# -----------------------------------------------------------------------------
# data, one run, its record


def prepare_data(args):
    shards = os.path.join(args.work, "shards")
    cmd = [sys.executable, str(REPO / "fineweb.py"), "--source", *args.source, "--local_dir", shards,
           "--shard_size", str(args.shard_size), "--max_tokens", str(args.max_tokens), "--workers", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode != 0:
        sys.exit(f"fineweb.py failed:\n{out.stdout}{out.stderr}")
    print(out.stdout.strip().splitlines()[-1])
    return shards


def trainer_argv(args, run, data_dir, log_dir):
    argv = [*CPU_FP32, *MODEL, *NO_EXTRAS, "--arch", run["arch"], "--optimizer", run["optimizer"],
            "--max_lr", f"{run['max_lr']:g}", "--seed", str(run["seed"]),
            "--micro_batch", str(args.micro_batch), "--total_batch", str(args.total_batch),
            "--max_steps", str(args.max_steps), "--warmup_steps", str(args.warmup_steps),
            "--val_every", str(args.val_every), "--val_tokens", str(args.val_tokens),
            "--data_dir", data_dir, "--log_dir", log_dir]
    if run["optimizer"] == "muon":
        argv += ["--muon_lr", f"{run['muon_lr']:g}"]
    return argv


def run_one(args, run, data_dir, bench_id):
    """Train one variant in a fresh folder; -> its JSON record (the trainer's stdout stays in the
    folder). A finished folder with the same command is reused, so a rerun picks up where a
    killed benchmark stopped."""
    log_dir = os.path.join(args.work, "runs", run["name"])
    argv = trainer_argv(args, run, data_dir, log_dir)
    if run["qkv"] == "split":
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "split_qkv", "--", *argv]
    else:
        cmd = [sys.executable, str(TRAINER), *argv]
    done_file = os.path.join(log_dir, "bench_record.json")
    if os.path.exists(done_file):
        with open(done_file) as f:
            record = json.load(f)
        if record["cmd"][1:] == cmd[1:]:
            return record | {"reused": True}
    shutil.rmtree(log_dir, ignore_errors=True)  # the trainer refuses a folder with checkpoints
    os.makedirs(log_dir)
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    load_before = os.getloadavg()
    t0 = time.time()
    with open(os.path.join(log_dir, "stdout.txt"), "w") as out:
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, check=False).returncode
    wall = time.time() - t0
    for ckpt in Path(log_dir).glob("model_*.pt"):  # the final checkpoint: ~80 MB we never read
        ckpt.unlink()
    record = make_record(args, run, log_dir, cmd, rc, wall, bench_id, load_before)
    if rc == 0:
        with open(done_file, "w") as f:
            json.dump(record, f)
    return record


def make_record(args, run, log_dir, cmd, rc, wall, bench_id, load_before):
    log = parse_log(os.path.join(log_dir, "log.txt")) if os.path.exists(os.path.join(log_dir, "log.txt")) else {}
    val = log.get("val", [])
    train = [v for _, v in log.get("train", [])]
    stdout = Path(log_dir, "stdout.txt").read_text()
    check = [json.loads(line.split(": ", 1)[1]) for line in stdout.splitlines() if line.startswith("split_qkv check: ")]
    config_file = Path(log_dir, "config.json")
    settings = json.loads(config_file.read_text()).get("optimizer_settings") if config_file.exists() else None
    finished = rc == 0 and bool(val) and val[-1][0] == args.max_steps
    return {
        "bench": bench_id, "variant": run["name"], "arch": run["arch"], "optimizer": run["optimizer"],
        "qkv": run["qkv"], "max_lr": run["max_lr"], "muon_lr": run.get("muon_lr"),
        "muon_lr_over_max_lr": run.get("mult"), "seed": run["seed"],
        "settings": {"model": " ".join(MODEL), "total_batch": args.total_batch, "micro_batch": args.micro_batch,
                     "max_steps": args.max_steps, "warmup_steps": args.warmup_steps, "schedule": "warmup + cosine to 0.1x",
                     "val_every": args.val_every, "val_tokens": args.val_tokens, "threads": args.threads,
                     "optimizers": settings},
        "val_curve": val,
        "final_val_loss": val[-1][1] if finished else None,
        "best_val_loss": min(v for _, v in val) if val else None,
        "train_loss_last": train[-1] if train else None,
        "train_loss_last10_mean": sum(train[-10:]) / len(train[-10:]) if train else None,
        "tokens": len(train) * args.total_batch,
        "wall_s": round(wall, 1),
        "trainer_elapsed_s": log["elapsed"][-1][1] if "elapsed" in log else None,
        "split_check": check[0] if check else None,
        "rc": rc, "error": None if finished else stdout.strip().splitlines()[-1:],
        "loadavg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "machine": machine(), "cmd": cmd,
    }


@functools.cache
def machine():
    """The CPU, core count and versions every record carries (probed once: they do not change)."""
    import torch

    model = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__}


# -----------------------------------------------------------------------------
# the plan: sweeps, then the design question, then repeats, as the budget allows


class Bench:
    def __init__(self, args):
        self.args, self.records, self.t0 = args, [], time.time()
        self.bench_id = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.data_dir = prepare_data(args)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def fits(self):
        """Another run fits if the mean run so far still ends inside --budget_min."""
        walls = [r["wall_s"] for r in self.records if not r.get("reused")] or [0]
        return time.time() - self.t0 + sum(walls) / len(walls) <= self.args.budget_min * 60

    def run(self, name, optimizer, max_lr, seed, arch="gpt2", mult=None, qkv=None, optional=False):
        existing = next((r for r in self.records if r["variant"] == name), None)
        if existing:
            return existing
        if optional and not self.fits():
            print(f"skipped {name}: over the --budget_min {self.args.budget_min:g}")
            return None
        run = {"name": name, "optimizer": optimizer, "max_lr": max_lr, "seed": seed, "arch": arch, "qkv": qkv}
        if optimizer == "muon":
            run.update(mult=mult, muon_lr=mult * max_lr, qkv=qkv or "fused")
        record = run_one(self.args, run, self.data_dir, self.bench_id)
        self.records.append(record)
        if not record.get("reused"):  # a reused run's line was written when it finished
            with open(self.args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
        final = record["final_val_loss"]
        print(f"{name}: final val {final if final is None else round(final, 4)}, wall {record['wall_s']:.0f}s"
              f"{' (reused)' if record.get('reused') else ''}, {(time.time() - self.t0) / 60:.1f} min so far", flush=True)
        return record

    def sweep(self, values, make_run):
        """Runs make_run(v) for each value; if the best is at an edge, one optional run a factor 2
        beyond it. -> the best value by final val loss."""
        values = sorted(values)
        results = {v: make_run(v, False) for v in values}
        best = best_of(results)
        if best is not None and len(values) > 1 and best in (values[0], values[-1]):
            beyond = best * 2.0 ** (-1 if best == values[0] else 1)
            results[beyond] = make_run(beyond, True)
            best = best_of(results)
        return best

    def main(self):
        a, seed = self.args, self.args.seeds[0]

        def adamw(lr, optional):
            return self.run(f"adamw_lr{lr:g}", "adamw", lr, seed, optional=optional)

        def muon(mult, optional):
            return self.run(f"muon_x{mult:g}", "muon", lr, seed, mult=mult, optional=optional)

        lr = self.sweep(a.adamw_lrs, adamw)
        if lr is None:
            sys.exit("every AdamW run failed; see the stdout.txt files under " + os.path.join(a.work, "runs"))
        mult = self.sweep(a.muon_mults, muon)
        if mult is None:
            sys.exit("every Muon run failed")
        # the design question at the best Muon LR, same seed; then both again at the second seed
        self.run(f"muon_split_x{mult:g}", "muon", lr, seed, mult=mult, qkv="split")
        for s in a.seeds[1:]:
            self.run(f"muon_x{mult:g}_s{s}", "muon", lr, s, mult=mult, optional=True)
            self.run(f"muon_split_x{mult:g}_s{s}", "muon", lr, s, mult=mult, qkv="split", optional=True)
            self.run(f"adamw_lr{lr:g}_s{s}", "adamw", lr, s, optional=True)
        self.run(f"modern_adamw_lr{lr:g}", "adamw", lr, seed, arch="modern", optional=True)
        self.run(f"modern_muon_x{mult:g}", "muon", lr, seed, arch="modern", mult=mult, optional=True)
        # is the best Muon LR the best at the other seed too?
        for s in a.seeds[1:]:
            for m in a.muon_mults:
                self.run(f"muon_x{m:g}_s{s}", "muon", lr, s, mult=m, optional=True)
        print()
        print(table(self.records))
        print()
        print(by_seed(self.records, lr, mult))
        print()
        print(summary(self.records, lr, mult))
        print(f"\n{len(self.records)} runs in {(time.time() - self.t0) / 60:.1f} min; records in {a.out}")


def best_of(results):
    ok = {v: r["final_val_loss"] for v, r in results.items() if r and r["final_val_loss"] is not None}
    return min(ok, key=ok.get) if ok else None


def fmt(x, digits=4):
    return "-" if x is None else f"{x:.{digits}f}"


def table(records):
    rows = ["| variant | arch | optimizer | q/k/v | LR (AdamW / Muon) | seed | final val | best val | train (last 10) | wall s |",
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        lrs = f"{r['max_lr']:g}" + (f" / {r['muon_lr']:g} ({r['muon_lr_over_max_lr']:g}x)" if r["muon_lr"] else "")
        rows.append(f"| {r['variant']} | {r['arch']} | {r['optimizer']} | {r['qkv'] or '-'} | {lrs} | {r['seed']} | "
                    f"{fmt(r['final_val_loss'])} | {fmt(r['best_val_loss'])} | {fmt(r['train_loss_last10_mean'])} | "
                    f"{r['wall_s']:.0f} |")
    return "\n".join(rows)


def by_seed(records, lr, mult):
    """Final val loss of the --arch gpt2 runs at the chosen LRs, one row per seed: the same-seed
    differences (same init, same batches) next to how much each column moves between seeds."""
    gpt2 = [r for r in records if r["arch"] == "gpt2" and r["final_val_loss"] is not None]
    mults = sorted({r["muon_lr_over_max_lr"] for r in gpt2 if r["qkv"] == "fused"})
    columns = [(f"AdamW {lr:g}", lambda r: r["optimizer"] == "adamw" and r["max_lr"] == lr)]
    columns += [(f"Muon {m:g}x", lambda r, m=m: r["qkv"] == "fused" and r["muon_lr_over_max_lr"] == m) for m in mults]
    columns += [(f"Muon {mult:g}x split", lambda r: r["qkv"] == "split" and r["muon_lr_over_max_lr"] == mult)]
    rows = ["| seed | " + " | ".join(name for name, _ in columns) + " | split - fused | Muon - AdamW |",
            "| ---: |" + " ---: |" * (len(columns) + 2)]

    def diff(x, y):
        return None if x is None or y is None else x - y

    for seed in dict.fromkeys(r["seed"] for r in gpt2):  # in the order they ran
        found = {name: next((r["final_val_loss"] for r in gpt2 if r["seed"] == seed and match(r)), None)
                 for name, match in columns}
        adamw, fused, split = found[f"AdamW {lr:g}"], found.get(f"Muon {mult:g}x"), found[f"Muon {mult:g}x split"]
        rows.append(f"| {seed} | " + " | ".join(fmt(v) for v in found.values()) +
                    f" | {fmt(diff(split, fused))} | {fmt(diff(fused, adamw))} |")
    return "\n".join(rows)


def summary(records, lr, mult):
    """The numbers the questions need: best of each optimizer, split minus fused per seed, and
    how far the same variant moves between seeds (the noise the split-fused gap is read against)."""
    by_name = {r["variant"]: r for r in records}

    def final(name):
        return (by_name.get(name) or {}).get("final_val_loss")

    lines = [f"best AdamW LR {lr:g}; best Muon LR {mult:g} x {lr:g} = {mult * lr:g}"]
    if final(f"adamw_lr{lr:g}") is not None and final(f"muon_x{mult:g}") is not None:
        lines.append(f"Muon - AdamW, final val: {final(f'muon_x{mult:g}') - final(f'adamw_lr{lr:g}'):+.4f}")
    for qkv in ("fused", "split"):
        finals = [(r["seed"], r["final_val_loss"]) for r in records if r["qkv"] == qkv and r["arch"] == "gpt2"
                  and r["muon_lr_over_max_lr"] == mult and r["final_val_loss"] is not None]
        if finals:
            spread = max(v for _, v in finals) - min(v for _, v in finals)
            lines.append(f"{qkv} Muon x{mult:g} by seed: " + ", ".join(f"{s}: {v:.4f}" for s, v in finals) +
                         (f" (spread {spread:.4f})" if len(finals) > 1 else ""))
    for r in records:
        fused = by_name.get(r["variant"].replace("muon_split_", "muon_"))
        if r["qkv"] == "split" and r["final_val_loss"] is not None and fused and fused["final_val_loss"] is not None:
            check = r["split_check"] or {}
            lines.append(f"split - fused, seed {r['seed']}: {r['final_val_loss'] - fused['final_val_loss']:+.4f} "
                         f"(split started from the fused weights: {check.get('same_init_as_fused')})")
    return "\n".join(lines)


if __name__ == "__main__":
    argv = sys.argv[1:]
    bench_argv, trainer_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = get_args(bench_argv)
    if args.worker:
        sys.exit(run_worker(trainer_args))
    if not args.source or args.source == [None]:
        sys.exit("no corpus found; pass --source FILES")
    Bench(args).main()
