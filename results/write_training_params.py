"""
Turn a training run's log.txt + config.json into a write-up: results/<run>/training_params.md
plus the loss / HellaSwag figure (loss.png).

Every number in the write-up is computed from the two files, never typed by hand, so the
write-up cannot contradict its own run (the hand-typed ones in the seed did: "every 250 steps"
where the log showed 500, one GPU where the README said two).

Usage:
    python results/write_training_params.py LOG_DIR [--out results/<run>] [--force]

LOG_DIR is the trainer's --log_dir (holding log.txt and config.json), or the log.txt itself.
The out folder gets copies of config.json, log.txt and samples.txt (when present) so that it
is self-contained, plus loss.png and training_params.md.

Also imported by show_results.ipynb: parse_log, load_run, summarize_run, plot_run,
format_summary_table, write_training_params.
"""

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# -----------------------------------------------------------------------------
# reference numbers drawn as horizontal lines (from karpathy/build-nanogpt, play.ipynb)
# The OpenAI GPT-2 124M checkpoint evaluated by build-nanogpt on the FineWeb-Edu val shard:
REF_GPT2_VAL_LOSS = 3.2924
# HellaSwag acc_norm, completion style (the same eval as hellaswag.py):
REF_GPT2_HELLA = 0.2945  # OpenAI GPT-2 124M checkpoint (0.294463 rounded)
REF_GPT3_HELLA = 0.337   # GPT-3 Small 125M, as reported in the GPT-3 paper (arXiv:2005.14165)
HELLA_CHANCE = 0.25      # 4 endings per example

FIGURE_NAME = "loss.png"
WRITEUP_NAME = "training_params.md"
COPIED_FILES = ("config.json", "log.txt", "samples.txt")


class RunError(Exception):
    """Bad input (missing log, unreadable config, refusing to overwrite): one line for the user."""


# -----------------------------------------------------------------------------
# reading a log

def parse_line(line):
    """'{step} {name} {value}' -> (step, name, value), or None for anything else."""
    parts = line.split()
    if len(parts) != 3:
        return None
    step, name, value = parts
    try:
        step = int(step)
        value = float(value)
    except ValueError:
        return None
    if step < 0:
        return None
    return step, name, value


def parse_log(path):
    """
    Read a log.txt into {name: [(step, value), ...]} sorted by step.
    Tolerant: blank, garbled or foreign lines are skipped; unknown names are kept; when a step
    appears twice for the same name (a resumed run re-logging steps) the later record wins.
    A last line without its newline is dropped: the writer was still in the middle of it
    (a crash, or the file is being read while the run goes on), so its value may be cut short.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    # after split, the last element is "" for a complete file and a partial line otherwise
    lines = lines[:-1]
    streams = {}
    for line in lines:
        record = parse_line(line)
        if record is None:
            continue
        step, name, value = record
        streams.setdefault(name, {})[step] = value  # later occurrence wins
    return {name: sorted(points.items()) for name, points in streams.items()}


@dataclass
class Run:
    name: str            # the log folder's name, e.g. "gpt2_124M_edu10B"
    log_path: Path       # .../log.txt
    log: dict            # parse_log() result
    config: dict | None  # config.json beside log.txt, or None

    @property
    def log_dir(self):
        return self.log_path.parent

    def series(self, name):
        """(steps, values) numpy arrays for one stream; empty arrays when not logged."""
        points = self.log.get(name, [])
        steps = np.array([s for s, _ in points], dtype=np.int64)
        values = np.array([v for _, v in points], dtype=np.float64)
        return steps, values


def resolve_log_path(path):
    """A log dir or a log.txt path -> the log.txt path (which must exist)."""
    path = Path(path)
    log_path = path / "log.txt" if path.is_dir() else path
    if not log_path.is_file():
        raise RunError(f"no log file at {log_path}")
    return log_path


def load_run(path, name=None):
    """Load a run from its log dir (or its log.txt), with config.json when it is beside the log."""
    log_path = resolve_log_path(path)
    config = None
    config_path = log_path.parent / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{config_path} is not valid JSON ({e})") from None
        if not isinstance(config, dict):
            raise RunError(f"{config_path} does not hold a JSON object")
    run_name = name or log_path.resolve().parent.name
    return Run(name=run_name, log_path=log_path, log=parse_log(log_path), config=config)


def as_runs(runs):
    """Accept one run / path or a list of them; return a list of Run."""
    if isinstance(runs, (Run, str, os.PathLike)):
        runs = [runs]
    return [r if isinstance(r, Run) else load_run(r) for r in runs]


# -----------------------------------------------------------------------------
# the numbers of a run

def _cfg(config, key):
    return None if config is None else config.get(key)


def _names_fineweb_edu(text):
    flat = "".join(ch for ch in str(text).lower() if ch.isalnum())
    return "fineweb" in flat and "edu" in flat


def find_data_manifest(data_dir):
    """fineweb.py's manifest.json of the run's data dir, when that dir is on this machine."""
    if not data_dir:
        return None
    repo_root = Path(__file__).resolve().parent.parent  # the trainer runs from the repo root
    for folder in (Path(data_dir), repo_root / data_dir):
        path = folder / "manifest.json"
        if path.is_file():
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return manifest if isinstance(manifest, dict) else None
    return None


def is_fineweb_edu(config):
    """
    Was the run trained on FineWeb-Edu? Judged from the input recorded in fineweb.py's
    manifest.json when the data dir is here, else from the data dir's name (edu_fineweb10B).
    None when the config does not name a data dir.
    """
    data_dir = _cfg(config, "data_dir")
    if not data_dir:
        return None
    manifest = find_data_manifest(data_dir)
    source = (manifest.get("settings") or {}).get("input") if manifest else None
    if source:
        return _names_fineweb_edu(json.dumps(source))
    return _names_fineweb_edu(data_dir)


def _last(points):
    return points[-1] if points else None


def _finite(points):
    return [(s, v) for s, v in points if math.isfinite(v)]


def _median(points):
    values = [v for _, v in _finite(points)]
    return float(np.median(values)) if values else None


def _cadence(points):
    """Median gap between the steps of a stream (how often it was logged), None if < 2 records."""
    steps = [s for s, _ in points]
    if len(steps) < 2:
        return None
    return int(np.median(np.diff(steps)))


def summarize_run(run):
    """All the numbers the write-up, the notebook table and the tests report, as a dict."""
    log, config = run.log, run.config
    train = log.get("train", [])
    val = log.get("val", [])
    hella = log.get("hella", [])
    s = {"name": run.name}

    last_train = _last(train)
    s["train_steps"] = last_train[0] + 1 if last_train else None  # steps are 0-based
    s["final_train"] = last_train
    s["max_steps"] = _cfg(config, "max_steps")
    s["tokens_per_step"] = _cfg(config, "tokens_per_step") or _cfg(config, "total_batch")
    s["tokens_seen"] = (s["train_steps"] * s["tokens_per_step"]
                        if s["train_steps"] and s["tokens_per_step"] else None)
    s["train_tokens"] = _cfg(config, "train_tokens")
    s["epochs"] = (s["tokens_seen"] / s["train_tokens"]
                   if s["tokens_seen"] and s["train_tokens"] else None)

    s["final_val"] = _last(val)
    s["best_val"] = min(_finite(val), key=lambda p: (p[1], p[0]), default=None)
    s["final_hella"] = _last(hella)
    s["best_hella"] = max(_finite(hella), key=lambda p: (p[1], -p[0]), default=None)
    s["final_hella_acc"] = _last(log.get("hella_acc", []))
    s["val_cadence"] = _cadence(val)
    s["hella_cadence"] = _cadence(hella)

    elapsed = _last(log.get("elapsed", []))
    s["wall_time_s"] = elapsed[1] if elapsed else None
    s["tok_per_s"] = _median(log.get("tok/s", []))
    s["mfu"] = _median(log.get("mfu", []))
    s["dt_ms"] = _median(log.get("dt", []))
    s["n_params"] = _cfg(config, "n_params")
    return s


# -----------------------------------------------------------------------------
# plotting (shared by the notebook and the write-up)

def smooth(values, window):
    """Trailing moving average; the first window-1 points average over what is available."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _auto_window(n):
    return max(1, min(100, n // 25))


def plot_run(runs, out_path=None, *, x_axis="step", smooth_window=None, title=None, loss_ylim=None):
    """
    Plot one or several runs: left, train loss (raw faint + smoothed) and val loss against the
    GPT-2 124M reference; right, HellaSwag acc_norm against GPT-2 / GPT-3 124M. x_axis is
    "step" or "tokens" (needs tokens_per_step in each config). Saves a PNG when out_path is
    given and returns the matplotlib Figure (created without pyplot, so no GUI backend needed).
    """
    from matplotlib.figure import Figure

    runs = as_runs(runs)
    use_tokens = x_axis == "tokens" and all(summarize_run(r)["tokens_per_step"] for r in runs)
    unit, xlabel = 1, "optimizer step"
    if use_tokens:
        most = max((summarize_run(r)["tokens_seen"] or 0) for r in runs)
        unit, xlabel = next((u, label) for u, label in ((1e9, "tokens (billions)"),
                            (1e6, "tokens (millions)"), (1, "tokens")) if most >= u or u == 1)
    fig = Figure(figsize=(15, 5.5), dpi=100)
    ax_loss, ax_hella = fig.subplots(1, 2)
    loss_values = []
    any_hella = False
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        prefix = f"{run.name} " if len(runs) > 1 else ""
        scale = summarize_run(run)["tokens_per_step"] / unit if use_tokens else 1

        steps, train = run.series("train")
        keep = np.isfinite(train)
        steps, train = steps[keep], train[keep]
        if len(train):
            window = smooth_window or _auto_window(len(train))
            smoothed = smooth(train, window)
            ax_loss.plot(steps * scale, train, color=color, alpha=0.2, linewidth=0.8)
            label = f"{prefix}train" + (f" (avg of {window})" if window > 1 else "")
            ax_loss.plot(steps * scale, smoothed, color=color, linewidth=1.5, label=label)
            # the first few percent of steps are far above the rest; leave them out of the y range
            loss_values.extend(smoothed[len(smoothed) // 50:])

        steps, val = run.series("val")
        keep = np.isfinite(val)
        if keep.any():
            ax_loss.plot(steps[keep] * scale, val[keep], color=color, linestyle="--", marker="o",
                         markersize=3, linewidth=1.5, label=f"{prefix}val")
            loss_values.extend(val[keep][len(val) // 50:])

        steps, hella = run.series("hella")
        keep = np.isfinite(hella)
        if keep.any():
            any_hella = True
            ax_hella.plot(steps[keep] * scale, hella[keep], color=color, marker="o", markersize=3,
                          linewidth=1.5, label=f"{prefix}acc_norm")

    # the reference only joins the y range once the run is within reach of it; a short or
    # tiny run far above it would otherwise be squashed into a flat line at the top
    ref_in_range = bool(loss_values) and min(loss_values) <= REF_GPT2_VAL_LOSS + 3.0
    ref_label = f"GPT-2 124M (FineWeb-Edu val) {REF_GPT2_VAL_LOSS}"
    if loss_values and not ref_in_range:
        ref_label += " (below the plotted range)"
    ax_loss.axhline(REF_GPT2_VAL_LOSS, color="red", linestyle=":", linewidth=1.2, label=ref_label)
    if loss_ylim is not None:
        ax_loss.set_ylim(*loss_ylim)
    elif loss_values:
        lo = min(loss_values) if not ref_in_range else min(min(loss_values), REF_GPT2_VAL_LOSS)
        hi = float(np.quantile(loss_values, 0.98))
        hi = max(hi, REF_GPT2_VAL_LOSS) if ref_in_range else hi
        pad = 0.05 * (hi - lo) + 0.02
        ax_loss.set_ylim(lo - pad, hi + pad)
    ax_loss.set_xlabel(xlabel)
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="best", fontsize=8)

    ax_hella.axhline(REF_GPT2_HELLA, color="red", linestyle=":", linewidth=1.2,
                     label=f"GPT-2 124M {REF_GPT2_HELLA}")
    ax_hella.axhline(REF_GPT3_HELLA, color="green", linestyle=":", linewidth=1.2,
                     label=f"GPT-3 124M {REF_GPT3_HELLA}")
    ax_hella.axhline(HELLA_CHANCE, color="gray", linestyle=":", linewidth=1.0,
                     label=f"chance {HELLA_CHANCE}")
    if not any_hella:
        ax_hella.set_ylim(0.2, 0.4)
        ax_hella.text(0.5, 0.6, "no HellaSwag records in the log", ha="center", va="center",
                      transform=ax_hella.transAxes, color="gray")
    ax_hella.set_xlabel(xlabel)
    ax_hella.set_ylabel("HellaSwag acc_norm")
    ax_hella.set_title("HellaSwag (val, completion style)")
    ax_hella.grid(alpha=0.3)
    ax_hella.legend(loc="best", fontsize=8)

    fig.suptitle(title or ", ".join(r.name for r in runs))
    fig.tight_layout()
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_path)
    return fig


# -----------------------------------------------------------------------------
# number formats (fixed, so a test can read every number back)

def fmt_int(n):
    return f"{int(n):,}"


def fmt_loss(x):
    return f"{x:.4f}"


def fmt_tokens(n):
    """5,120 (0.01 M) / 9,999,745,024 (10.00 B)"""
    human = f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"
    return f"{fmt_int(n)} ({human})"


def fmt_value(v):
    """A config value as it is written in the hyperparameter table: JSON, strings bare."""
    return v if isinstance(v, str) else json.dumps(v)


def fmt_point(point, fmt=fmt_loss):
    """(step, value) -> '3.2812 (step 19073)'."""
    return f"{fmt(point[1])} (step {point[0]})" if point else "not logged"


def format_summary_table(runs):
    """A plain-text table of the headline numbers of each run (for the notebook)."""
    runs = as_runs(runs)
    header = ["run", "steps", "tokens", "last train", "last val", "best val",
              "last hella", "best hella", "wall h", "tok/s"]
    rows = [header]
    for run in runs:
        s = summarize_run(run)
        rows.append([
            run.name,
            fmt_int(s["train_steps"]) if s["train_steps"] else "-",
            fmt_int(s["tokens_seen"]) if s["tokens_seen"] else "-",
            fmt_loss(s["final_train"][1]) if s["final_train"] else "-",
            fmt_point(s["final_val"]) if s["final_val"] else "-",
            fmt_point(s["best_val"]) if s["best_val"] else "-",
            fmt_point(s["final_hella"]) if s["final_hella"] else "-",
            fmt_point(s["best_hella"]) if s["best_hella"] else "-",
            f"{s['wall_time_s'] / 3600:.2f}" if s["wall_time_s"] is not None else "-",
            f"{s['tok_per_s']:,.0f}" if s["tok_per_s"] is not None else "-",
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


# -----------------------------------------------------------------------------
# the write-up

def flatten_config(config, prefix=""):
    """{"a": 1, "model_config": {"n_layer": 12}} -> [("a", 1), ("model_config.n_layer", 12)]"""
    items = []
    for key, value in config.items():
        if isinstance(value, dict):
            items.extend(flatten_config(value, f"{prefix}{key}."))
        else:
            items.append((f"{prefix}{key}", value))
    return items


def _md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(text):
    return f"`{_md_cell(text)}`"


def render_markdown(run, figure_rel=None):
    """The write-up text for a loaded run (figure_rel: the figure's path relative to the md)."""
    s = summarize_run(run)
    cfg = run.config or {}
    mcfg = cfg.get("model_config") or {}

    def get(key):
        # a model field may sit in model_config or, for older configs, at the top level
        return mcfg.get(key, cfg.get(key))

    out = [f"# Training run: {run.name}", ""]
    out.append("Generated from this run's `log.txt` and `config.json`; every number below is "
               "computed from those two files.")
    out.append("")

    # --- headline ---
    out += ["## Summary", "", "| quantity | value |", "| --- | --- |"]
    rows = []
    if s["train_steps"] is not None:
        of = f" of {fmt_int(s['max_steps'])} (max_steps)" if s["max_steps"] else ""
        rows.append(("optimizer steps done", f"{fmt_int(s['train_steps'])}{of}"))
    rows.append(("tokens per step", fmt_int(s["tokens_per_step"]) if s["tokens_per_step"] else "unknown"))
    rows.append(("tokens seen", fmt_tokens(s["tokens_seen"]) if s["tokens_seen"] else "unknown"))
    if s["train_tokens"]:
        rows.append(("train tokens available", fmt_tokens(s["train_tokens"])))
    rows.append(("epochs over the train data", f"{s['epochs']:.3f}" if s["epochs"] is not None else "unknown"))
    rows.append(("last train loss", fmt_point(s["final_train"])))
    rows.append(("last val loss", fmt_point(s["final_val"])))
    rows.append(("best val loss", fmt_point(s["best_val"])))
    rows.append(("last HellaSwag acc_norm", fmt_point(s["final_hella"])))
    rows.append(("best HellaSwag acc_norm", fmt_point(s["best_hella"])))
    if s["final_hella_acc"]:
        rows.append(("last HellaSwag acc", fmt_point(s["final_hella_acc"])))
    if s["wall_time_s"] is not None:
        rows.append(("wall time", f"{s['wall_time_s']:.1f} s ({s['wall_time_s'] / 3600:.2f} h)"))
    else:
        rows.append(("wall time", "not logged"))
    rows.append(("median throughput", f"{s['tok_per_s']:,.0f} tok/s" if s["tok_per_s"] is not None else "not logged"))
    if s["dt_ms"] is not None:
        rows.append(("median step time", f"{s['dt_ms']:.1f} ms"))
    if s["mfu"] is not None:
        rows.append(("median MFU", f"{100 * s['mfu']:.2f} %"))
    out += [f"| {k} | {_md_cell(v)} |" for k, v in rows]
    out.append("")

    # --- references ---
    out += ["Reference points (the dotted lines in the figure):", ""]
    out.append(f"- GPT-2 124M (OpenAI checkpoint) val loss on the FineWeb-Edu val shard: "
               f"{REF_GPT2_VAL_LOSS}")
    out.append(f"- HellaSwag acc_norm, completion style: GPT-2 124M {REF_GPT2_HELLA}, "
               f"GPT-3 124M {REF_GPT3_HELLA}")
    edu = is_fineweb_edu(cfg)
    if edu is False:
        out.append(f"- **This run's data (`{_md_cell(cfg.get('data_dir'))}`) is not FineWeb-Edu, so "
                   f"its val loss is not comparable to the GPT-2 reference val loss.** "
                   f"HellaSwag does not depend on the training data and stays comparable.")
    elif edu is None:
        out.append("- The config does not name the data dir, so it is unknown whether the val "
                   "loss is comparable to the FineWeb-Edu reference.")
    out.append("")

    # --- notes on how this log came to be ---
    notes = []
    if s["max_steps"] and s["train_steps"] is not None and s["train_steps"] < s["max_steps"]:
        notes.append(f"The log ends after step {fmt_int(s['train_steps'])} of "
                     f"{fmt_int(s['max_steps'])}: the run is unfinished or was stopped early.")
    resumed = cfg.get("resumed_from") or []
    if resumed:
        notes.append(f"The run was resumed {len(resumed)} time(s), from: "
                     + ", ".join(_code(p) for p in resumed) + ".")
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]

    # --- figure ---
    if figure_rel:
        out += ["## Loss and HellaSwag", "", f"![loss and HellaSwag]({figure_rel})", ""]

    # --- architecture ---
    out += ["## Architecture", "", "| field | value |", "| --- | --- |"]
    for key in ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        value = get(key)
        out.append(f"| {key} | {_code(fmt_value(value)) if value is not None else 'unknown'} |")
    n_params = s["n_params"]
    out.append(f"| parameters | {f'{fmt_int(n_params)} ({n_params / 1e6:.2f} M)' if n_params else 'unknown'} |")
    out.append("")

    # --- training setup in words ---
    out += ["## Training setup", ""]
    mb, t, ws, ga = (cfg.get(k) for k in ("micro_batch", "seq_len", "world_size", "grad_accum_steps"))
    if None not in (mb, t, ws, ga):
        out.append(f"- batch: {mb} sequences x {t} tokens x {ws} process(es) x {ga} accumulation "
                   f"step(s) = {fmt_int(mb * t * ws * ga)} tokens per optimizer step")
    if cfg.get("max_lr") is not None:
        line = f"- learning rate: max_lr {fmt_value(cfg['max_lr'])}"
        if cfg.get("warmup_steps") is not None:
            line += f", {fmt_value(cfg['warmup_steps'])} warmup steps"
        if cfg.get("min_lr_ratio") is not None:
            line += (f", decaying to min_lr_ratio {fmt_value(cfg['min_lr_ratio'])} x max_lr = "
                     f"{cfg['max_lr'] * cfg['min_lr_ratio']:.4g}")
        out.append(line)
    opt = [f"{key} {fmt_value(cfg[key])}" for key in ("weight_decay", "grad_clip")
           if cfg.get(key) is not None]
    if opt:
        out.append("- optimizer: " + ", ".join(opt))
    misc = []
    for key in ("dtype", "dtype_resolved", "compile", "compile_resolved", "shuffle", "seed"):
        if key in cfg:
            misc.append(f"{key} {_code(fmt_value(cfg[key]))}")
    if misc:
        out.append("- run: " + ", ".join(misc))
    evals = []
    if cfg.get("val_every") == 0:
        evals.append("val loss off (val_every 0)")
    elif cfg.get("val_every") is not None:
        on = f" on {fmt_int(cfg['val_tokens_used'])} tokens" if cfg.get("val_tokens_used") else ""
        evals.append(f"val loss every {fmt_value(cfg['val_every'])} steps{on} (config)")
    if s["val_cadence"] is not None:
        evals.append(f"val records every {s['val_cadence']} steps (log)")
    if cfg.get("hellaswag_every") == 0:
        evals.append("HellaSwag off (hellaswag_every 0)")
    elif cfg.get("hellaswag_every") is not None:
        limit = cfg.get("hellaswag_limit")
        on = f" on the first {fmt_int(limit)} examples" if limit else " on the full val set"
        evals.append(f"HellaSwag every {fmt_value(cfg['hellaswag_every'])} steps{on} (config)")
    if s["hella_cadence"] is not None:
        evals.append(f"HellaSwag records every {s['hella_cadence']} steps (log)")
    if evals:
        out.append("- evals: " + "; ".join(evals))
    out.append(f"- data: {_code(cfg.get('data_dir', 'unknown'))}")
    device = cfg.get("device_name")
    n_gpus = cfg.get("n_gpus")
    hw = f"{n_gpus} x {_code(device)}" if (n_gpus and device and device != "cpu") else _code(device or "unknown")
    hw += f", world_size {ws}" if ws is not None else ""
    if cfg.get("torch_version"):
        hw += f", torch {_code(cfg['torch_version'])}"
    out.append(f"- hardware: {hw}")
    if cfg.get("started_at"):
        out.append(f"- started at: {_code(cfg['started_at'])}")
    out.append("")

    # --- every hyperparameter ---
    out += ["## All config values", "", "Every key of `config.json` (nested keys joined with a dot).", ""]
    if run.config:
        out += ["| key | value |", "| --- | --- |"]
        out += [f"| {_code(k)} | {_code(fmt_value(v))} |" for k, v in flatten_config(run.config)]
    else:
        out.append("No `config.json` was found beside the log.")
    out.append("")
    out.append("---")
    out.append("*generated by results/write_training_params.py from log.txt and config.json — "
               "do not edit by hand*")
    return "\n".join(out) + "\n"


def _is_prefix_of(old_path, new_path):
    """Is the content of old_path the start of new_path's (the same run, logged further)?"""
    old, new = Path(old_path).read_bytes(), Path(new_path).read_bytes()
    return new.startswith(old)


def copy_run_files(log_dir, out_dir, force=False):
    """
    Copy config.json, log.txt and samples.txt into out_dir. A log.txt already there that is not
    the start of the new one belongs to another run: refuse (unless force) instead of losing it.
    """
    log_dir, out_dir = Path(log_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if out_dir.resolve() == log_dir.resolve():
        return []
    old_log = out_dir / "log.txt"
    if old_log.is_file() and not force and not _is_prefix_of(old_log, log_dir / "log.txt"):
        raise RunError(f"{old_log} holds a different run's log; pass --force to replace it")
    copied = []
    for fname in COPIED_FILES:
        src = log_dir / fname
        if src.is_file():
            shutil.copyfile(src, out_dir / fname)
            copied.append(out_dir / fname)
    return copied


def write_training_params(log_dir, out_dir, figure_path=None, copy_files=True, force=False):
    """
    Write out_dir/training_params.md for the run in log_dir (a log dir or its log.txt) and
    return its path. Without figure_path the figure is drawn into out_dir/loss.png; with one,
    that (already saved) figure is embedded instead. copy_files puts config.json, log.txt and
    samples.txt beside the write-up so that the results folder stands on its own.
    """
    log_path = resolve_log_path(log_dir)
    out_dir = Path(out_dir)
    run = load_run(log_path)
    if not run.log:
        raise RunError(f"{log_path} holds no '{{step}} {{name}} {{value}}' records yet")
    if copy_files:
        copy_run_files(log_path.parent, out_dir, force=force)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figure_path is None:
        figure_path = out_dir / FIGURE_NAME
        plot_run(run, figure_path)
    figure_rel = Path(os.path.relpath(Path(figure_path).resolve(), out_dir.resolve())).as_posix()
    md_path = out_dir / WRITEUP_NAME
    md_path.write_text(render_markdown(run, figure_rel), encoding="utf-8")
    return md_path


# -----------------------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log_dir", help="the run's --log_dir (with log.txt, config.json) or its log.txt")
    parser.add_argument("--out", default=None,
                        help="results folder to write (default: results/<name of the log dir>)")
    parser.add_argument("--force", action="store_true",
                        help="replace files in --out that belong to a different run")
    args = parser.parse_args(argv)
    try:
        log_path = resolve_log_path(args.log_dir)
        out = args.out or Path(__file__).resolve().parent / log_path.resolve().parent.name
        md_path = write_training_params(log_path, out, force=args.force)
    except (RunError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {md_path} and {Path(md_path).parent / FIGURE_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
