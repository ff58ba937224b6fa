"""
A run's log.txt + config.json -> results/<run>/training_params.md and the loss / HellaSwag figure
loss.png (every number computed from the two files), with config.json, log.txt and samples.txt
copied beside them. From the repo root: `from results import write_training_params as wtp`, or

    python results/write_training_params.py LOG_DIR [--out DIR] [--force]

(--out defaults to results/<LOG_DIR's name>). log.txt is read by train_gpt2.read_log, the one
reader of the format that train_gpt2.RunLog writes. Bad input: one line `error: ...` on stderr
and exit code 1 (arguments argparse cannot parse: its usage line and exit code 2).
"""

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script, sys.path starts at results/
    sys.path.append(str(REPO))
import train_gpt2  # noqa: E402  (log.txt's reader)

# reference lines (karpathy/build-nanogpt): OpenAI's GPT-2 124M loss on the FineWeb-Edu val shard
# and its HellaSwag acc_norm (completion style, as hellaswag.py scores it); GPT-3 Small (125M)
# HellaSwag from the GPT-3 paper (arXiv:2005.14165)
REF_GPT2_VAL_LOSS, REF_GPT2_HELLA = train_gpt2.GPT2_VAL_LOSS, train_gpt2.GPT2_HELLASWAG
REF_GPT3_HELLA = 0.337
COPIED_FILES = ("config.json", "log.txt", "samples.txt")
OPTIMIZER_NAMES = {"adamw": "AdamW", "muon": "Muon"}


class RunError(Exception):
    """Bad input (no log, bad config, another run's files in the way): one line for the user."""

    def _render_traceback_(self):  # IPython / Jupyter: show the message, not a traceback
        return [f"RunError: {self}"]


@dataclass
class Run:
    name: str            # the log dir's name
    log_path: Path
    log: dict            # train_gpt2.read_log(log_path).streams(): {name: [(step, value)]}
    config: dict | None  # the config.json beside the log, if any
    unreadable: list = field(default_factory=list)  # the lines of log.txt that are not records


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
    records = train_gpt2.read_log(log_path)
    return Run(log_path.resolve().parent.name, log_path, records.streams(), config,
               records.unreadable)


def best_point(points, sign):
    """The best (step, value) of a stream (sign 1: the lowest, -1: the highest; the earliest of
    equals), or None. A nan or inf that the run logged wins only when there is nothing else."""
    finite = [p for p in points if np.isfinite(p[1])] or points
    return min(finite, key=lambda p: (sign * p[1], p[0]), default=None)


def summarize_run(run):
    """The headline numbers: points are (step, value), None when not logged."""
    log, cfg = run.log, run.config or {}

    def last(name):
        return log[name][-1] if log.get(name) else None

    def median(name):  # of the values that are numbers: one nan or inf record does not decide it
        values = [v for _, v in log.get(name, []) if np.isfinite(v)]
        return float(np.median(values)) if values else None

    s = {"final_train": last("train"), "final_val": last("val"), "final_hella": last("hella"),
         "best_val": best_point(log.get("val", []), 1),
         "best_hella": best_point(log.get("hella", []), -1),
         "wall_time_s": last("elapsed")[1] if log.get("elapsed") else None,
         "tok_per_s": median("tok/s"), "mfu": median("mfu"),
         "tokens_per_step": cfg.get("tokens_per_step")}
    s["steps"] = s["final_train"][0] + 1 if s["final_train"] else 0  # train records are 0-based
    s["tokens_seen"] = s["steps"] * s["tokens_per_step"] if s["tokens_per_step"] else None
    s["epochs"] = (s["tokens_seen"] / cfg["train_tokens"]
                   if s["tokens_seen"] and cfg.get("train_tokens") else None)
    return s


# -----------------------------------------------------------------------------
# the figure

X_AXES = {"step": "optimizer step", "tokens": "tokens",
          "hours": "wall time (hours, with evaluations)"}
HELLASWAG_EXAMPLES = 10_042  # HellaSwag's val set: the reference lines are scored on all of it
# config.json's targets (train_gpt2.py --target_val_loss / --target_hellaswag): what each measures
METRICS = {"val": ("val loss", REF_GPT2_VAL_LOSS, "<="),
           "hella": ("HellaSwag", REF_GPT2_HELLA, ">=")}


def step_to_x(run, x_axis):
    """steps -> this run's x in x_axis units, or None where its files cannot say: tokens need
    tokens_per_step in config.json, hours the log's elapsed records (the wall time at the end of a
    step, evaluations included; interpolated between records)."""
    if x_axis == "step":
        return lambda steps: np.asarray(steps, dtype=float)
    if x_axis == "tokens":
        per_step = (run.config or {}).get("tokens_per_step")
        return (lambda steps: np.asarray(steps, dtype=float) * per_step) if per_step else None
    elapsed = stream(run, "elapsed")
    return (lambda steps: np.interp(steps, *elapsed) / 3600) if elapsed.shape[1] else None


def short(value):
    """A setting's value for a label on the figure: a path by its last part."""
    text = fmt(value)
    return (Path(text).name or text) if isinstance(value, str) and "/" in value else text


def curve_markers(run):
    """[(step, label)] in step order, one label a step: where the run continued from a checkpoint
    (config.json's resumed_from) and where a setting changed (setting_changes)."""
    cfg, at = run.config or {}, {}
    for step in map(train_gpt2.checkpoint_step, cfg.get("resumed_from") or []):
        if step is not None:
            at.setdefault(step, {})["resumed"] = None  # a dict as an ordered set
    for c in cfg.get("setting_changes") or []:
        label = f"{c.get('setting')} {short(c.get('old'))} -> {short(c.get('new'))}"
        at.setdefault(c.get("step", 0), {})[label] = None
    return [(step, ", ".join(labels)) for step, labels in sorted(at.items())]


def hellaswag_title(runs):
    """The HellaSwag panel's title: which runs scored a subset (config.json's hellaswag_limit),
    since the reference lines are scores on the whole val set ("" when none did)."""
    subsets = {r.name: r.config["hellaswag_limit"] for r in runs if r.log.get("hella")
               and 0 < ((r.config or {}).get("hellaswag_limit") or HELLASWAG_EXAMPLES)
               < HELLASWAG_EXAMPLES}
    if not subsets:
        return ""
    which = (f"the first {next(iter(subsets.values())):,} examples" if len(runs) == 1 else
             ", ".join(f"{name}: {n:,}" for name, n in subsets.items()) + " examples")
    return (f"HellaSwag scored on {which} only;\n"
            f"the reference lines are on all {HELLASWAG_EXAMPLES:,}: not comparable")


def config_targets(run):
    """config.json's targets (none in runs from before targets)."""
    return [t for t in (run.config or {}).get("targets") or []
            if isinstance(t, dict) and "target" in t and t.get("metric") in METRICS]


def stream(run, name):
    """One logged stream as (steps, values), a (2, records) array."""
    return np.array(run.log.get(name, []), dtype=float).reshape(-1, 2).T


def plot_curves(ax_loss, ax_hella, run, x, style, prefix, smooth):
    """One run's train loss (raw, faint, and a trailing mean over `smooth` steps), val loss and
    HellaSwag; -> the loss values the axis must show (past the first, far higher, steps)."""
    (steps, train), (val_steps, val), (hella_steps, hella) = (
        stream(run, name) for name in ("train", "val", "hella"))
    shown = []
    if len(train):
        window = smooth or max(1, min(100, len(train) // 25))
        avg = np.array([train[max(0, j + 1 - window):j + 1].mean() for j in range(len(train))])
        ax_loss.plot(x(steps), train, alpha=0.2, linewidth=0.8, **style)
        label = f"{prefix}train (mean of {window})" if window > 1 else f"{prefix}train"
        ax_loss.plot(x(steps), avg, label=label, **style)
        shown += list(avg[len(avg) // 50:])
    ax_loss.plot(x(val_steps), val, "o--", label=f"{prefix}val" if len(val) else None, **style)
    ax_hella.plot(x(hella_steps), hella, "o-", label=f"{prefix}acc_norm" if len(hella) else None,
                  **style)
    return shown + list(val[len(val) // 50:])


def mark_run(ax_loss, ax_hella, run, x, color, prefix, side="right"):
    """A thin vertical line with a label at each resume and setting change (side: the label's edge
    on the line, so "right" puts it left of the line); the run's targets (where they are not a
    reference line already) and where it reached them."""
    for step, label in curve_markers(run):
        for ax in (ax_loss, ax_hella):
            ax.axvline(x([step])[0], color=color, linewidth=0.6, alpha=0.6)
            ax.text(x([step])[0], 0.99, f" {prefix}{label}", rotation=90, fontsize=7, va="top",
                    ha=side, color=color, transform=ax.get_xaxis_transform())
    for t in [t for t in config_targets(run) if t.get("applies")]:  # drawn where they apply
        ax, (name, ref, sign) = ax_loss if t["metric"] == "val" else ax_hella, METRICS[t["metric"]]
        if t["target"] != ref:
            ax.axhline(t["target"], color=color, linestyle="--", linewidth=0.8,
                       label=f"{prefix}target {sign} {fmt(t['target'])}")
        if t.get("reached"):
            r = t["reached"]
            ax.plot(x([r["step"]]), [r["value"]], "*", color=color, markersize=12,
                    label=f"{prefix}{name} target reached (step {r['step']:,})")


def plot_runs(runs, out_path=None, x_axis="step", smooth=None):
    """Left: train loss (raw, faint, and a trailing mean over `smooth` steps) and val loss against
    GPT-2 124M; right: HellaSwag acc_norm against GPT-2 / GPT-3 124M; resumes and setting
    changes marked, targets as lines. runs: a Run or a log path, or a list of them. x_axis:
    "step", "tokens" (tokens_per_step from config.json) or "hours" (the elapsed records); when a
    run cannot give tokens or hours, every run is drawn by step. out_path: save a PNG."""
    from matplotlib.figure import Figure  # not pyplot: no GUI backend needed

    if x_axis not in X_AXES:
        raise RunError(f"x_axis {x_axis!r}: use one of {', '.join(map(repr, X_AXES))}")
    runs = [r if isinstance(r, Run) else load_run(r)
            for r in (runs if isinstance(runs, list) else [runs])]
    xs = [step_to_x(r, x_axis) for r in runs]
    xlabel = X_AXES[x_axis]
    if None in xs:
        lacking = ", ".join(r.name for r, x in zip(runs, xs) if x is None)
        xs = [step_to_x(r, "step") for r in runs]
        xlabel = f"optimizer step ({lacking}: no {x_axis})"
    fig = Figure(figsize=(15, 5.5), dpi=100)
    ax_loss, ax_hella = fig.subplots(1, 2)
    losses = []  # what the loss axis must show
    for i, (run, x) in enumerate(zip(runs, xs)):
        color, prefix = f"C{i % 10}", f"{run.name} " if len(runs) > 1 else ""
        losses += plot_curves(ax_loss, ax_hella, run, x, {"color": color, "markersize": 3}, prefix,
                              smooth)
        mark_run(ax_loss, ax_hella, run, x, color, prefix, ("right", "left")[i % 2])
    losses = [v for v in losses if np.isfinite(v)]
    near = bool(losses and min(losses) <= REF_GPT2_VAL_LOSS + 3)  # a far one squashes the curves
    far = "" if near or not losses else ", below the plotted range"
    ax_loss.axhline(REF_GPT2_VAL_LOSS, color="red", linestyle=":",
                    label=f"GPT-2 124M {REF_GPT2_VAL_LOSS} (FineWeb-Edu val){far}")
    if losses:
        ref = [REF_GPT2_VAL_LOSS] if near else []
        lo, hi = min(losses + ref), max([np.quantile(losses, 0.98)] + ref)
        ax_loss.set_ylim(lo - 0.05 * (hi - lo) - 0.02, hi + 0.05 * (hi - lo) + 0.02)
    for ref, color, label in ((REF_GPT2_HELLA, "red", "GPT-2 124M"),
                              (REF_GPT3_HELLA, "green", "GPT-3 124M"), (0.25, "gray", "chance")):
        ax_hella.axhline(ref, color=color, linestyle=":", label=f"{label} {ref}")
    if not any(r.log.get("hella") for r in runs):
        ax_hella.set_xlim(ax_loss.get_xlim())
        ax_hella.text(0.5, 0.6, "no HellaSwag records in the log", transform=ax_hella.transAxes,
                      ha="center", color="gray")
    ax_hella.set_title(hellaswag_title(runs), fontsize=9, color="darkred")
    for ax, ylabel in ((ax_loss, "cross-entropy loss"),
                       (ax_hella, "HellaSwag acc_norm (completion style)")):
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(", ".join(r.name for r in runs))
    fig.tight_layout()
    if out_path is not None:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path)
    return fig


# -----------------------------------------------------------------------------
# the write-up

def fmt(value):
    """A config value as the write-up shows it: JSON, strings bare."""
    return value if isinstance(value, str) else json.dumps(value)


def count_text(n):
    """12,345 / 4.56 M / 1.23 B"""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def optimizer_text(cfg):
    """config optimizer / optimizer_settings in words; configs older than those fields: AdamW."""
    settings = cfg.get("optimizer_settings")
    if not settings:
        name = cfg.get("optimizer", "adamw")
        return f"{OPTIMIZER_NAMES.get(name, name)}: " + ", ".join(
            f"{k} {fmt(cfg[k])}" for k in ("max_lr", "weight_decay") if k in cfg)
    return "; ".join(OPTIMIZER_NAMES.get(group, group)
                     + (f" ({v['params']:,} params)" if "params" in v else "") + ": "
                     + ", ".join(f"{k} {fmt(x)}" for k, x in v.items() if k != "params")
                     for group, v in settings.items())


def time_and_cost(seconds, usd_per_hour):
    """The run's length and price the way build-nanogpt's README gives them: "~11 hours, ~$7"."""
    hours = seconds / 3600
    text = (f"~{hours:.0f} hours" if hours >= 1.5 else f"~{seconds / 60:.0f} minutes"
            if seconds >= 90 else f"~{seconds:.0f} seconds")
    if usd_per_hour:
        usd = hours * usd_per_hour
        text += f", ~${usd:.0f}" if usd >= 1.5 else f", ~${usd:.2f}"
    return text + (" (wall time, evaluations included" + (f", at ${fmt(usd_per_hour)} per hour)"
                                                          if usd_per_hour else ")"))


def small(x):
    """Hours for a sentence: 10.6, and 0.0042 rather than 0.0 for a tiny run."""
    return f"{x:.1f}" if abs(x) >= 0.1 else f"{x:.2g}"


def target_text(target, log):
    """One target of config.json in words: where it was reached (step, tokens, training hours,
    GPU-hours, cost), or the closest the run came, or why it does not apply."""
    name, ref, sign = METRICS[target["metric"]]
    value = target["target"]
    what = (f"GPT-2's {name}" if value == ref else f"the {name} target") + f" ({sign} {fmt(value)})"
    if not target.get("applies", True):
        return f"{what}: does not apply ({target.get('note') or 'no reason recorded'})"
    r = target.get("reached")
    if r:
        usd = f", ${r['usd']:.2f}" if r.get("usd") is not None else ""
        return (f"reached {what} at step {r['step']:,}, {count_text(r['tokens'])} tokens, "
                f"{small(r['train_hours'])} h of training ({small(r['gpu_hours'])} GPU-hours{usd})")
    best = best_point(log.get(target["metric"], []), 1 if sign == "<=" else -1)
    closest = (f"the best {name} {best[1]:.4f} (step {best[0]:,})" if best
               else f"no {name} logged")
    return f"did not reach {what}: {closest}"


def unreadable_text(run):
    """Which lines of log.txt could not be read (they are left out of everything): the first
    that is not blank (called only when there are some)."""
    first = next((i for i, line in enumerate(run.unreadable) if line.strip()), None)
    if first is None:
        return "all blank"
    line = run.unreadable[first]
    shown = repr(line if len(line) <= 60 else line[:57] + "...")
    return f"the first{' non-blank' if first else ''}: {shown}"


def summary_rows(run, summary=None):
    """(label, text) pairs: the write-up's summary table, and what the notebook prints; summary:
    summarize_run(run), when the caller has it already."""
    s, cfg = summary or summarize_run(run), run.config or {}
    model = {**cfg, **(cfg.get("model_config") or {})}
    shape = ", ".join(f"{k} {model[k]}" for k in
                      ("n_layer", "n_head", "n_embd", "block_size", "vocab_size") if k in model)
    card = (f"{cfg['n_gpus']} x " if cfg.get("n_gpus") else "") + str(cfg.get("device_name")
                                                                       or "unknown")
    params = cfg.get("n_params")
    rows = [("arch", str(cfg.get("arch") or model.get("arch") or "unknown")
             + (f" ({shape})" if shape else "")),
            ("parameters", f"{params:,} ({params / 1e6:.2f} M"
             + (", the untied head included" if model.get("arch") == "speedrun" else "") + ")"
             if params else "unknown"),
            ("card", card + (f" (world_size {cfg['world_size']})" if "world_size" in cfg else "")),
            ("data", str(cfg.get("data_dir") or "unknown")
             + (f" ({cfg['train_tokens']:,} train tokens)" if cfg.get("train_tokens") else "")),
            ("optimizer", optimizer_text(cfg))]
    if cfg.get("recipe"):
        rows.append(("recipe", f"--recipe {cfg['recipe']} (its resolved values are the rows "
                     f"here and the config table below)"))
    if {"max_lr", "min_lr_ratio", "warmup_steps", "max_steps"} <= cfg.keys():
        wsd = cfg.get("lr_schedule") == "wsd"
        shape = (f"flat, then linearly over the last {fmt(cfg.get('cooldown_frac'))} of the "
                 f"steps" if wsd else "then a cosine")
        rows.append(("schedule", (
            f"{'warmup-stable-decay' if wsd else 'cosine'}: max_lr {fmt(cfg['max_lr'])}, "
            f"{cfg['warmup_steps']} warmup steps, {shape} down to min_lr_ratio "
            f"{fmt(cfg['min_lr_ratio'])} x max_lr = {cfg['max_lr'] * cfg['min_lr_ratio']:.4g} "
            f"at max_steps {cfg['max_steps']}")))
    rows.append(("steps", f"{s['steps']:,}" + (f" of {cfg['max_steps']:,} (max_steps)"
                                               if cfg.get("max_steps") else "")))
    rows.append(("tokens per step", f"{s['tokens_per_step']:,}" if s["tokens_per_step"]
                 else "unknown"))
    seen = s["tokens_seen"]
    human = f" ({count_text(seen)})" if seen and seen >= 1e6 else ""
    rows.append(("tokens seen", f"{seen:,}{human} = steps x tokens per step" if seen is not None
                 else "unknown"))
    rows.append(("epochs", f"{s['epochs']:.3f} = tokens seen / train tokens" if s["epochs"]
                 else "unknown"))
    wall = s["wall_time_s"]
    rows.append(("wall time", f"{wall:.1f} s ({wall / 3600:.2f} h), the last elapsed record"
                 if wall is not None else "not logged"))
    rows.append(("time and cost", time_and_cost(wall, cfg.get("usd_per_hour"))
                 if wall is not None else "not logged"))
    rows.append(("median tok/s", f"{s['tok_per_s']:,.0f}" if s["tok_per_s"] is not None
                 else "not logged"))
    rows.append(("median MFU", f"{100 * s['mfu']:.2f} %" if s["mfu"] is not None
                 else "not logged"))
    point = lambda p: f"{p[1]:.4f} (step {p[0]})" if p else "not logged"
    rows += [(label, point(s[key])) for label, key in (
        ("final train loss", "final_train"), ("final val loss", "final_val"),
        ("best val loss", "best_val"), ("final HellaSwag acc_norm", "final_hella"),
        ("best HellaSwag acc_norm", "best_hella"))]
    rows += [(f"{METRICS[t['metric']][0]} target", target_text(t, run.log))
             for t in config_targets(run)]
    resumed = cfg.get("resumed_from") or []
    rows.append(("resumes", f"{len(resumed)}: " + ", ".join(map(str, resumed)) if resumed
                 else "none"))
    # `train_gpt2.py --resume` may change the schedule mid-run; the rows above show the last values
    changes = [f"step {c['step']}: {c['setting']} {fmt(c['old'])} -> {fmt(c['new'])}"
               for c in cfg.get("setting_changes") or []]
    rows.append(("setting changes", "; ".join(changes) + " (the rows above show the new values)"
                 if changes else "none"))
    rows.append(("unreadable log lines", f"{len(run.unreadable):,} left out; {unreadable_text(run)}"
                 if run.unreadable else "none"))
    return rows


def flatten(config, prefix=""):
    """{"model_config": {"n_layer": 12}} -> ("model_config.n_layer", 12)"""
    for key, value in config.items():
        yield from (flatten(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else [(prefix + key, value)])


def render_markdown(run, figure="loss.png"):
    """The write-up's text; figure: the figure's path relative to the write-up."""
    cfg, summary = run.config or {}, summarize_run(run)
    steps = summary["steps"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    out = [f"# Training run: {run.name}", "",
           ("*Generated by results/write_training_params.py from this run's `log.txt` and "
            "`config.json`: do not edit by hand.*"), "", "| quantity | value |", "| --- | --- |"]
    out += [f"| {label} | {cell(text)} |" for label, text in summary_rows(run, summary)] + [""]
    if cfg.get("max_steps") and steps < cfg["max_steps"]:
        out.append(f"- The log ends after step {steps:,} of {cfg['max_steps']:,}: the run is "
                   "unfinished or was stopped.")
    if run.unreadable:
        out.append(f"- {len(run.unreadable):,} lines of log.txt are not records and are left out "
                   "of every number and the figure (see 'unreadable log lines').")
    out.append(f"- References (dotted lines): GPT-2 124M val loss {REF_GPT2_VAL_LOSS} on the "
               "FineWeb-Edu val shard (comparable only if this run's data dir holds FineWeb-Edu); "
               f"HellaSwag acc_norm on the full val set: GPT-2 124M {REF_GPT2_HELLA}, "
               f"GPT-3 124M {REF_GPT3_HELLA}.")
    if hellaswag_title([run]):
        out.append(f"- This run's HellaSwag is scored on the first {cfg['hellaswag_limit']:,} "
                   f"examples only, the references on all {HELLASWAG_EXAMPLES:,}: not comparable.")
    if curve_markers(run):
        out.append("- Thin vertical lines on the figure: where the run continued from a checkpoint "
                   "and where a setting changed.")
    out += ["", "## Loss and HellaSwag", "", f"![loss and HellaSwag]({figure})", "",
            "## All config values", ""]
    flat = [f"| `{cell(key)}` | `{cell(fmt(value))}` |" for key, value in flatten(cfg)]
    out += (["| key | value |", "| --- | --- |", *flat] if flat
            else ["No `config.json` was found beside the log."])
    return "\n".join(out) + "\n"


def write_training_params(log_dir, out_dir=None, figure_path=None, force=False):
    """Write out_dir/training_params.md (and out_dir/loss.png, unless figure_path names a figure
    already drawn) for the run in log_dir, copy its files beside them and return the .md's path.
    out_dir defaults to results/<the run's name>. A log.txt in out_dir that is not the start of
    this one is another run's: RunError unless force. Lines of log.txt that are not records are
    counted, and the first one shown, on the console and in the write-up."""
    run = load_run(log_dir)
    out_dir = Path(out_dir) if out_dir else Path(__file__).resolve().parent / run.name
    if not run.log:
        raise RunError(f"{run.log_path} holds no '{{step}} {{name}} {{value}}' records yet")
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() != run.log_path.parent.resolve():
        old = out_dir / "log.txt"
        if (old.is_file() and not force
                and not run.log_path.read_bytes().startswith(old.read_bytes())):
            raise RunError(f"{old} holds a different run's log; pass --force to replace it")
        for name in COPIED_FILES:
            if (run.log_path.parent / name).is_file():
                shutil.copyfile(run.log_path.parent / name, out_dir / name)
    if run.unreadable:
        print(f"{run.log_path}: {len(run.unreadable):,} lines could not be read and are left out "
              f"({unreadable_text(run)})")
    if figure_path is None:
        figure_path = out_dir / "loss.png"
        plot_runs(run, figure_path)
    md_path = out_dir / "training_params.md"
    figure = Path(os.path.relpath(figure_path, out_dir)).as_posix()
    md_path.write_text(render_markdown(run, figure), encoding="utf-8")
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
