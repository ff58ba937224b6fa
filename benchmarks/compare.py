"""
Variants at equal tokens: the same shards, batch, steps, schedule length and val set for every
variant, one trainer run each, compared by validation loss. One driver wherever it runs:

- on a GPU: `gpu_check.py run --plan compare` runs VARIANTS at the 124M shape on the real-text
  corpus (its own ~9-minute device call; sizes and commands in benchmarks/README.md);
- anywhere: finished run folders (each with log.txt and config.json) -> the table

      python benchmarks/compare.py RUN_DIR [RUN_DIR ...]     # the first one is the target

Per variant: final val loss; the tokens and the training seconds it needed to reach the first
run's final val loss (between two evaluations by linear interpolation), and its token-efficiency
ratio (the target run's tokens / its own); tokens/s; HellaSwag at the end; the command.
"""

import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt2  # noqa: E402  (log.txt's one reader)


@dataclass
class Variant:
    name: str
    flags: list  # the trainer flags that make this variant
    own_schedule: bool = False  # keeps its recipe's warmup (the shared --warmup_steps is left out)


# The target first: every other variant is measured by the tokens it needs to reach its final val
# loss. Then the bundles in order of the gain claimed for them, so a short budget drops the least.
# Each uses the trainer's own default LRs for its arch and optimizer (stated in README.md).
VARIANTS = [
    Variant("gpt2", ["--arch", "gpt2"]),
    Variant("fast", ["--recipe", "fast"], own_schedule=True),
    Variant("modern-muon", ["--arch", "modern", "--optimizer", "muon"]),
    Variant("modern", ["--arch", "modern"]),
]


def flags(d):
    return [x for k, v in d.items() for x in (f"--{k}", str(v))]


def variant_flags(variant, run):
    """The trainer flags of one variant: its own, then the run's shared ones (a dict of flags)."""
    return variant.flags + flags({k: v for k, v in run.items()
                                  if not (variant.own_schedule and k == "warmup_steps")})


def figures(log_dir):
    """What the table needs from one finished run folder, JSON-ready."""
    streams = train_gpt2.read_log(Path(log_dir) / "log.txt").streams()
    config = json.loads((Path(log_dir) / "config.json").read_text())
    step_s = {s: dt / 1000 for s, dt in streams.get("dt", [])}
    # seconds of training before each evaluation; step 0's includes the compile and is left out
    seconds = lambda step: sum(v for s, v in step_s.items() if 0 < s < step)
    tok_s = [v for s, v in streams.get("tok/s", []) if s > 0]
    hella = streams.get("hella_acc", [])
    return {"tokens_per_step": config["tokens_per_step"], "steps": len(streams.get("train", [])),
            "val": [[s, v, round(seconds(s), 2)] for s, v in streams.get("val", [])],
            "tok_per_s": round(statistics.median(tok_s)) if tok_s else None,
            "hella_acc": hella[-1][1] if hella else None, "command": config.get("command")}


def reach(val, target):
    """(step, train seconds) where the val curve [[step, loss, seconds]] first gets to `target`,
    linear between two evaluations; None if it never does."""
    for (s0, l0, t0), (s1, l1, t1) in zip([val[0]] + val, val):
        if l1 <= target:
            f = (l0 - target) / (l0 - l1) if l0 > l1 else 1.0
            return s0 + f * (s1 - s0), t0 + f * (t1 - t0)
    return None


def comparison(runs):
    """runs: [(name, status, figures or None, command)], the target first -> markdown lines."""
    fig0 = runs[0][2] if runs and runs[0][1] == "ok" else None
    target = fig0["val"][-1][1] if fig0 and fig0["val"] else None
    base = reach(fig0["val"], target) if target is not None else None
    lines = [f"Target: the {runs[0][0]} run's final val loss, "
             + (f"{target:.4f}." if target is not None else "missing: no ratios.") if runs else "",
             "", "| variant | status | final val | tokens to target | vs gpt2 | train s to target "
             "| tok/s | HellaSwag | command |", "|" + " --- |" * 9]
    for name, status, fig, command in runs:
        row = [name, status] + [""] * 7
        if fig and fig["val"]:
            hit = reach(fig["val"], target) if target is not None else None
            tps = fig["tokens_per_step"]
            row[2] = f"{fig['val'][-1][1]:.4f}"
            row[3] = (f"{hit[0] * tps / 1e6:.2f}M" if hit else
                      f"not in {fig['steps'] * tps / 1e6:.2f}M") if target is not None else ""
            row[4] = f"{base[0] / hit[0]:.2f}x" if hit and base and hit[0] > 0 else ""
            row[5] = f"{hit[1]:.1f}" if hit else ""
            row[6] = f"{fig['tok_per_s']:,}" if fig["tok_per_s"] else ""
            row[7] = f"{fig['hella_acc']:.4f}" if fig["hella_acc"] is not None else ""
        row[8] = f"`{command}`"
        lines.append("| " + " | ".join(row) + " |")
    return lines + ["", "vs gpt2: the target run's tokens to its own final val loss / this "
                    "variant's (above 1: fewer tokens). train s: the step times before it, the "
                    "first step's compile and the evaluations left out."]


def main(argv=None):
    dirs = sys.argv[1:] if argv is None else argv
    if not dirs or any(not (Path(d) / "log.txt").is_file() for d in dirs):
        print("error: pass run folders that hold log.txt and config.json, the target first",
              file=sys.stderr)
        return 1
    figs = [figures(d) for d in dirs]
    runs = [(Path(d).name, "ok", f, f["command"]) for d, f in zip(dirs, figs)]
    print("\n".join(comparison(runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
