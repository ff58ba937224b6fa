"""
A run's log.txt + config.json -> results/<run>/training_params.md and the loss / HellaSwag figure
loss.png (every number computed from the two files), with config.json, log.txt and samples.txt
copied beside them.  From the repo root: `from results import write_training_params as wtp`, or

    python results/write_training_params.py LOG_DIR [--out DIR (default results/<LOG_DIR's name>)] [--force]

Bad input: one line `error: ...` on stderr and exit code 1 (arguments argparse cannot parse: its
usage line and exit code 2).
"""

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# reference lines (karpathy/build-nanogpt): OpenAI's GPT-2 124M loss on the FineWeb-Edu val shard
# and its HellaSwag acc_norm (completion style, as hellaswag.py scores it); GPT-3 Small (125M)
# HellaSwag from the GPT-3 paper (arXiv:2005.14165)
REF_GPT2_VAL_LOSS, REF_GPT2_HELLA, REF_GPT3_HELLA = 3.2924, 0.2945, 0.337
COPIED_FILES = ("config.json", "log.txt", "samples.txt")
OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}


class RunError(Exception):
    """Bad input (no log, bad config, another run's files in the way): one line for the user."""

    def _render_traceback_(self):  # IPython / Jupyter: show the message, not a traceback
        return [f"RunError: {self}"]


def parse_log(path):
    """log.txt -> {name: [(step, value), ...] sorted by step}. Lines that are not '{step} {name}
    {value}' are skipped; a step logged twice (a resumed run) keeps its later record; a last line
    without its newline is dropped (still being written, or cut off by a crash)."""
    streams = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").split("\n")[:-1]:
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit():
            try:
                streams.setdefault(parts[1], {})[int(parts[0])] = float(parts[2])
            except ValueError:
                pass
    return {name: sorted(points.items()) for name, points in streams.items()}


@dataclass
class Run:
    name: str            # the log dir's name
    log_path: Path
    log: dict            # parse_log()
    config: dict | None  # the config.json beside the log, if any


def load_run(path):
    """A Run from a log dir or its log.txt, with the config.json beside it when there is one."""
    log_path = Path(path) / "log.txt" if Path(path).is_dir() else Path(path)
    if not log_path.is_file():
        raise RunError(f"no log file at {log_path}")
    config, config_path = None, log_path.parent / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise RunError(f"{config_path} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise RunError(f"{config_path} does not hold a JSON object")
    return Run(log_path.resolve().parent.name, log_path, parse_log(log_path), config)


def summarize_run(run):
    """The headline numbers: points are (step, value), None when not logged."""
    log, cfg = run.log, run.config or {}
    last = lambda name: log[name][-1] if log.get(name) else None
    median = lambda name: float(np.median([v for _, v in log[name]])) if log.get(name) else None
    s = {"final_train": last("train"), "final_val": last("val"), "final_hella": last("hella"),
         "best_val": min(log.get("val", []), key=lambda p: (p[1], p[0]), default=None),
         "best_hella": max(log.get("hella", []), key=lambda p: (p[1], -p[0]), default=None),
         "wall_time_s": last("elapsed")[1] if log.get("elapsed") else None,
         "tok_per_s": median("tok/s"), "mfu": median("mfu"), "tokens_per_step": cfg.get("tokens_per_step")}
    s["steps"] = s["final_train"][0] + 1 if s["final_train"] else 0  # train records are 0-based
    s["tokens_seen"] = s["steps"] * s["tokens_per_step"] if s["tokens_per_step"] else None
    s["epochs"] = s["tokens_seen"] / cfg["train_tokens"] if s["tokens_seen"] and cfg.get("train_tokens") else None
    return s


def plot_runs(runs, out_path=None, x_axis="step", smooth=None):
    """Left: train loss (raw, faint, and a trailing mean over `smooth` steps) and val loss against
    GPT-2 124M; right: HellaSwag acc_norm against GPT-2 / GPT-3 124M. runs: a Run or a log path, or
    a list of them; x_axis "tokens" needs tokens_per_step in each config. out_path: save a PNG."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend needed

    runs = [r if isinstance(r, Run) else load_run(r) for r in (runs if isinstance(runs, list) else [runs])]
    by_tokens = x_axis == "tokens" and all((r.config or {}).get("tokens_per_step") for r in runs)
    fig = Figure(figsize=(15, 5.5), dpi=100)
    ax_loss, ax_hella = fig.subplots(1, 2)
    losses = []  # what the loss axis must show: the curves after their first, far higher, steps
    for i, run in enumerate(runs):
        style, prefix = {"color": f"C{i % 10}", "markersize": 3}, f"{run.name} " if len(runs) > 1 else ""
        (steps, train), (val_steps, val), (hella_steps, hella) = (
            np.array(run.log.get(name, []), dtype=float).reshape(-1, 2).T for name in ("train", "val", "hella"))
        scale = run.config["tokens_per_step"] if by_tokens else 1
        if len(train):
            window = smooth or max(1, min(100, len(train) // 25))
            avg = np.array([train[max(0, j + 1 - window):j + 1].mean() for j in range(len(train))])
            ax_loss.plot(steps * scale, train, alpha=0.2, linewidth=0.8, **style)
            label = f"{prefix}train (mean of {window})" if window > 1 else f"{prefix}train"
            ax_loss.plot(steps * scale, avg, label=label, **style)
            losses += list(avg[len(avg) // 50:])
        ax_loss.plot(val_steps * scale, val, "o--", label=f"{prefix}val" if len(val) else None, **style)
        ax_hella.plot(hella_steps * scale, hella, "o-", label=f"{prefix}acc_norm" if len(hella) else None, **style)
        losses += list(val[len(val) // 50:])
    losses = [v for v in losses if np.isfinite(v)]
    near = bool(losses and min(losses) <= REF_GPT2_VAL_LOSS + 3)  # a far reference would squash the curves
    ax_loss.axhline(REF_GPT2_VAL_LOSS, color="red", linestyle=":", label=f"GPT-2 124M {REF_GPT2_VAL_LOSS} "
                    f"(FineWeb-Edu val){'' if near or not losses else ', below the plotted range'}")
    if losses:
        ref = [REF_GPT2_VAL_LOSS] if near else []
        lo, hi = min(losses + ref), max([np.quantile(losses, 0.98)] + ref)
        ax_loss.set_ylim(lo - 0.05 * (hi - lo) - 0.02, hi + 0.05 * (hi - lo) + 0.02)
    for ref, color, label in ((REF_GPT2_HELLA, "red", "GPT-2 124M"), (REF_GPT3_HELLA, "green", "GPT-3 124M"),
                              (0.25, "gray", "chance")):
        ax_hella.axhline(ref, color=color, linestyle=":", label=f"{label} {ref}")
    if not any(r.log.get("hella") for r in runs):
        ax_hella.set_xlim(ax_loss.get_xlim())
        ax_hella.text(0.5, 0.6, "no HellaSwag records in the log", transform=ax_hella.transAxes, ha="center",
                      color="gray")
    for ax, ylabel in ((ax_loss, "cross-entropy loss"), (ax_hella, "HellaSwag acc_norm (completion style)")):
        ax.set(xlabel="tokens" if by_tokens else "optimizer step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(", ".join(r.name for r in runs))
    fig.tight_layout()
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path)
    return fig


def fmt(value):
    """A config value as the write-up shows it: JSON, strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def optimizer_text(cfg):
    """config optimizer / optimizer_settings in words; configs older than those fields were AdamW."""
    settings = cfg.get("optimizer_settings")
    if not settings:
        name = cfg.get("optimizer", "adamw")
        return f"{OPTIMIZER_NAMES.get(name, name)}: " + ", ".join(
            f"{k} {fmt(cfg[k])}" for k in ("max_lr", "weight_decay") if k in cfg)
    return "; ".join(OPTIMIZER_NAMES.get(group, group) + (f" ({v['params']:,} params)" if "params" in v else "")
                     + ": " + ", ".join(f"{k} {fmt(x)}" for k, x in v.items() if k != "params")
                     for group, v in settings.items())


def summary_rows(run, summary=None):
    """(label, text) pairs: the write-up's summary table, and what the notebook prints; summary:
    summarize_run(run), when the caller has it already."""
    s, cfg = summary or summarize_run(run), run.config or {}
    model = {**cfg, **(cfg.get("model_config") or {})}
    point = lambda p: f"{p[1]:.4f} (step {p[0]})" if p else "not logged"
    shape = ", ".join(f"{k} {model[k]}" for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size")
                      if k in model)
    card = (f"{cfg['n_gpus']} x " if cfg.get("n_gpus") else "") + str(cfg.get("device_name") or "unknown")
    rows = [("arch", str(cfg.get("arch") or model.get("arch") or "unknown") + (f" ({shape})" if shape else "")),
            ("parameters", f"{cfg['n_params']:,} ({cfg['n_params'] / 1e6:.2f} M)" if cfg.get("n_params") else "unknown"),
            ("card", card + (f" (world_size {cfg['world_size']})" if "world_size" in cfg else "")),
            ("data", str(cfg.get("data_dir") or "unknown") + (f" ({cfg['train_tokens']:,} train tokens)"
                                                              if cfg.get("train_tokens") else "")),
            ("optimizer", optimizer_text(cfg))]
    if {"max_lr", "min_lr_ratio", "warmup_steps", "max_steps"} <= cfg.keys():
        rows.append(("schedule", (f"max_lr {fmt(cfg['max_lr'])}, {cfg['warmup_steps']} warmup steps, down to "
                                  f"min_lr_ratio {fmt(cfg['min_lr_ratio'])} x max_lr = "
                                  f"{cfg['max_lr'] * cfg['min_lr_ratio']:.4g} at max_steps {cfg['max_steps']}")))
    rows.append(("steps", f"{s['steps']:,}" + (f" of {cfg['max_steps']:,} (max_steps)" if cfg.get("max_steps") else "")))
    rows.append(("tokens per step", f"{s['tokens_per_step']:,}" if s["tokens_per_step"] else "unknown"))
    seen = s["tokens_seen"]
    human = f" ({seen / 1e9:.2f} B)" if seen and seen >= 1e9 else f" ({seen / 1e6:.2f} M)" if seen and seen >= 1e6 else ""
    rows.append(("tokens seen", f"{seen:,}{human} = steps x tokens per step" if seen is not None else "unknown"))
    rows.append(("epochs", f"{s['epochs']:.3f} = tokens seen / train tokens" if s["epochs"] else "unknown"))
    wall = s["wall_time_s"]
    rows.append(("wall time", f"{wall:.1f} s ({wall / 3600:.2f} h), the last elapsed record" if wall is not None
                 else "not logged"))
    rows.append(("median tok/s", f"{s['tok_per_s']:,.0f}" if s["tok_per_s"] is not None else "not logged"))
    rows.append(("median MFU", f"{100 * s['mfu']:.2f} %" if s["mfu"] is not None else "not logged"))
    rows += [(label, point(s[key])) for label, key in (
        ("final train loss", "final_train"), ("final val loss", "final_val"), ("best val loss", "best_val"),
        ("final HellaSwag acc_norm", "final_hella"), ("best HellaSwag acc_norm", "best_hella"))]
    resumed = cfg.get("resumed_from") or []
    rows.append(("resumes", f"{len(resumed)}: " + ", ".join(map(str, resumed)) if resumed else "none"))
    # `train_gpt2.py --resume` may change the schedule mid-run; the rows above show the last values
    changes = [f"step {c['step']}: {c['setting']} {fmt(c['old'])} -> {fmt(c['new'])}"
               for c in cfg.get("setting_changes") or []]
    rows.append(("setting changes", "; ".join(changes) + " (the rows above show the new values)"
                 if changes else "none"))
    return rows


def flatten(config, prefix=""):
    """{"model_config": {"n_layer": 12}} -> ("model_config.n_layer", 12)"""
    for key, value in config.items():
        yield from flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]


def render_markdown(run, figure="loss.png"):
    """The write-up's text; figure: the figure's path relative to the write-up."""
    cfg, summary = run.config or {}, summarize_run(run)
    steps = summary["steps"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    out = [f"# Training run: {run.name}", "", ("*Generated by results/write_training_params.py from this run's "
                                               "`log.txt` and `config.json`: do not edit by hand.*"),
           "", "| quantity | value |", "| --- | --- |"]
    out += [f"| {label} | {cell(text)} |" for label, text in summary_rows(run, summary)] + [""]
    if cfg.get("max_steps") and steps < cfg["max_steps"]:
        out.append(f"- The log ends after step {steps:,} of {cfg['max_steps']:,}: the run is unfinished or was stopped.")
    out.append(f"- References (dotted lines): GPT-2 124M val loss {REF_GPT2_VAL_LOSS} on the FineWeb-Edu val shard "
               f"(comparable only if this run's data dir holds FineWeb-Edu); HellaSwag acc_norm on the full val "
               f"set: GPT-2 124M {REF_GPT2_HELLA}, GPT-3 124M {REF_GPT3_HELLA}.")
    if cfg.get("hellaswag_limit") and run.log.get("hella"):
        out.append(f"- This run's HellaSwag is scored on the first {cfg['hellaswag_limit']:,} examples only.")
    out += ["", "## Loss and HellaSwag", "", f"![loss and HellaSwag]({figure})", "", "## All config values", ""]
    flat = [f"| `{cell(key)}` | `{cell(fmt(value))}` |" for key, value in flatten(cfg)]
    out += ["| key | value |", "| --- | --- |", *flat] if flat else ["No `config.json` was found beside the log."]
    return "\n".join(out) + "\n"


def write_training_params(log_dir, out_dir=None, figure_path=None, force=False):
    """Write out_dir/training_params.md (and out_dir/loss.png, unless figure_path names a figure
    already drawn) for the run in log_dir, copy its files beside them and return the .md's path.
    out_dir defaults to results/<the run's name>. A log.txt in out_dir that is not the start of
    this one is another run's: RunError unless force."""
    run = load_run(log_dir)
    out_dir = Path(out_dir) if out_dir else Path(__file__).resolve().parent / run.name
    if not run.log:
        raise RunError(f"{run.log_path} holds no '{{step}} {{name}} {{value}}' records yet")
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != run.log_path.parent.resolve():
        old = out_dir / "log.txt"
        if old.is_file() and not force and not run.log_path.read_bytes().startswith(old.read_bytes()):
            raise RunError(f"{old} holds a different run's log; pass --force to replace it")
        for name in COPIED_FILES:
            if (run.log_path.parent / name).is_file():
                shutil.copyfile(run.log_path.parent / name, out_dir / name)
    if figure_path is None:
        figure_path = out_dir / "loss.png"
        plot_runs(run, figure_path)
    md_path = out_dir / "training_params.md"
    md_path.write_text(render_markdown(run, Path(os.path.relpath(figure_path, out_dir)).as_posix()), encoding="utf-8")
    return md_path


def main(argv=None):
    p = argparse.ArgumentParser(description="log.txt + config.json -> "
                                "results/<run>/training_params.md + loss.png")
    p.add_argument("log_dir", help="the run's --log_dir (with log.txt and config.json), or its "
                   "log.txt")
    p.add_argument("--out", help="the results folder to write (default: results/<name of the log "
                   "dir>)")
    p.add_argument("--force", action="store_true", help="replace another run's files in --out")
    args = p.parse_args(argv)
    try:
        if not args.log_dir or args.out == "":  # "" would mean the current folder
            raise RunError("LOG_DIR or --out is an empty path; pass folders")
        if args.out and os.path.isfile(args.out):
            raise RunError(f"--out {args.out} is a file; pass a folder")
        md_path = write_training_params(args.log_dir, args.out, force=args.force)
    except (RunError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {md_path} and {md_path.parent / 'loss.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
