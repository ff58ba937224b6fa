"""
Tests for the reporting side: results/write_training_params.py (log reading with
train_gpt2.read_log, figure, write-up, CLI) and show_results.ipynb run headless.

    python -m pytest tests/test_results.py -q

check_writeup() recomputes every number of a generated training_params.md from the raw log.txt and
config.json with this file's own small parser (not train_gpt2's reader: an independent check), so a
wrong number fails here.
The last test trains a tiny model on CPU with train_gpt2.py and runs the notebook on its log.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from results import write_training_params as wtp

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "show_results.ipynb"
TRAINER = REPO / "train_gpt2.py"

MUON_SETTINGS = {
    "adamw": {"lr": 0.0006, "betas": [0.9, 0.95], "eps": 1e-08, "weight_decay": 0.1,
              "params": 38597376},
    "muon": {"lr": 0.0006, "momentum": 0.95, "nesterov": True, "ns_steps": 5,
             "adjust_lr_fn": "match_rms_adamw",
             "weight_decay": 0.1, "params": 84934656},
}


# -----------------------------------------------------------------------------
# synthetic runs

def write_log(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_config(log_dir, **overrides):
    """A config.json with the keys the trainer writes, small numbers."""
    config = {
        "data_dir": "/data/edu_fineweb10B", "log_dir": str(log_dir), "model": "",
        "arch": "gpt2", "micro_batch": 4, "seq_len": 32, "total_batch": 256,
        "max_steps": 40, "warmup_steps": 3, "max_lr": 0.0018, "min_lr_ratio": 0.1,
        "weight_decay": 0.1, "grad_clip": 1.0, "seed": 1337, "shuffle": 1,
        "val_every": 10, "val_tokens": 2048, "hellaswag_every": 20, "hellaswag_limit": 50,
        "sample_every": 0, "checkpoint_every": 25, "compile": 0, "device": "cuda",
        "dtype": "bfloat16",
        "model_config": {"block_size": 64, "vocab_size": 50304, "n_layer": 2, "n_head": 2,
                         "n_embd": 64, "arch": "gpt2"},
        "n_params": 3_354_752, "world_size": 2, "grad_accum_steps": 1,
        "device_name": "NVIDIA H100 80GB HBM3", "n_gpus": 2, "torch_version": "2.13.0+cu128",
        "started_at": "2026-01-02T03:04:05", "resumed_from": ["/ckpt/run_a/model_00025.pt"],
        "setting_changes": [{"step": 25, "setting": "max_steps", "old": 40, "new": 50}],
        "tokens_per_step": 256, "train_tokens": 7_000, "val_tokens_used": 2048,
    }
    config.update(overrides)
    return config


def make_synthetic_run(log_dir, max_steps=40, resume_at=25, crash_at=30, **config_overrides):
    """log.txt + config.json of a run that crashed after step crash_at-1, was resumed from step
    resume_at (re-logging those steps with new values) and finished; garbage lines in between, an
    unterminated line at the end, and final evals worse than the best ones."""
    rng = np.random.default_rng(0)
    config = make_config(log_dir, max_steps=max_steps, **config_overrides)
    lines = []

    def segment(first, last, t0):
        for step in range(first, last + 1):
            end = step == max_steps  # the last evals are worse than the best ones
            if step % config["val_every"] == 0 or end:
                val = 9.0 - 0.1 * step + 1.5 * end + rng.uniform(-0.05, 0.05)
                lines.append(f"{step} val {val:.4f}")
            if step % config["hellaswag_every"] == 0 or end:
                hella = 0.25 + 0.001 * step - 0.03 * end + rng.uniform(0, 0.01)
                lines.append(f"{step} hella {hella:.4f}")
                lines.append(f"{step} hella_acc {0.25 + rng.uniform(0, 0.01):.4f}")
            if step == max_steps:
                break
            lines.append(f"{step} train {10.0 - 0.1 * step + rng.normal(0, 0.1):.6f}")
            lines.append(f"{step} lr {config['max_lr'] * min(1.0, (step + 1) / 3):.4e}")
            lines.append(f"{step} norm {rng.uniform(0.2, 2.0):.4f}")
            lines.append(f"{step} dt {rng.uniform(90, 110):.2f}")
            lines.append(f"{step} tok/s {rng.uniform(2400, 2600):.1f}")
            lines.append(f"{step} mfu {rng.uniform(0.3, 0.5):.4f}")
            lines.append(f"{step} elapsed {t0 + 0.1 * (step + 1):.2f}")

    segment(0, crash_at - 1, 0.0)
    lines += ["", "garbage line", "12 val", "x train 3.0", "13 train abc", "1 2 3 4"]
    segment(resume_at, max_steps, 5.0)
    lines.append("7 unknown_stream 1.5")
    text = "\n".join(lines) + "\n" + f"{max_steps - 1} train 0.12"  # unterminated: not a record
    write_log(log_dir / "log.txt", text)
    (log_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return config


# -----------------------------------------------------------------------------
# the test's own reading of a log and config, and the check of a write-up against them

def raw_streams(log_path):
    """{name: {step: value}}, independent of the module."""
    text = Path(log_path).read_text(encoding="utf-8")
    text = text[: text.rfind("\n") + 1]  # an unterminated last line is not a record
    streams = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            continue
        try:
            step, value = int(parts[0]), float(parts[2])
        except ValueError:
            continue
        streams.setdefault(parts[1], {})[step] = value  # the later record wins
    return streams


def raw_unreadable(log_path):
    """The complete lines of the log that are not '{step} {name} {number}', independent of the
    module."""
    lines = Path(log_path).read_text(encoding="utf-8").split("\n")[:-1]
    return [line for line in lines if not re.fullmatch(r"\d+ \S+ \S+", line)
            or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|nan|-?inf",
                                line.split(" ")[2])]


def numbers_in(value):
    """Every number in a config value, nested lists and dicts included (targets,
    setting_changes)."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def flat_config(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from flat_config(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def json_or_str(value):
    return value if isinstance(value, str) else json.dumps(value)


def expected_numbers(streams, config):
    """Every quantity the write-up states, recomputed from the raw log and config."""
    def last(name):
        points = streams.get(name, {})
        return (max(points), points[max(points)]) if points else None

    def median(name):
        values = list(streams.get(name, {}).values())
        return float(np.median(values)) if values else None

    e = {key: last(name) for key, name in
         (("final_train", "train"), ("final_val", "val"), ("final_hella", "hella"))}
    e["wall"] = last("elapsed")[1] if streams.get("elapsed") else None
    e["steps"] = e["final_train"][0] + 1 if e["final_train"] else 0
    e["tokens_seen"] = e["steps"] * config["tokens_per_step"]
    e["epochs"] = e["tokens_seen"] / config["train_tokens"]
    val, hella = streams.get("val", {}), streams.get("hella", {})
    e["best_val"] = min(val.items(), key=lambda p: (p[1], p[0]), default=None)
    e["best_hella"] = max(hella.items(), key=lambda p: (p[1], -p[0]), default=None)
    e["tok/s"], e["mfu"] = median("tok/s"), median("mfu")
    return e


NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def is_rounding_of(number, allowed):
    """Is the written number some allowed value rounded to the digits it shows?"""
    x = float(number)
    tol = 0.5 * 10.0 ** Decimal(number).as_tuple().exponent * (1 + 1e-9) + 1e-12
    return any(abs(x - a) <= tol for a in allowed)


def table_rows(md):
    """All '| key | value |' rows of the markdown as {key: value} (first occurrence)."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 2 and cells[0] not in rows:
            rows[cells[0]] = cells[1]
    return rows


def first_number(cell):
    return float(cell.split()[0].replace(",", ""))


def parse_point(cell):
    m = re.fullmatch(r"(-?[\d.]+) \(step (\d+)\)", cell)
    assert m, f"not a 'value (step N)' cell: {cell!r}"
    return float(m.group(1)), int(m.group(2))


def check_optimizer(cell, config):
    """The optimizer row: each optimizer_settings group with its parameter count and every setting;
    configs from before the optimizer fields were AdamW with the top-level max_lr and
    weight_decay."""
    settings = config.get("optimizer_settings")
    if not settings:
        assert cell == (f"AdamW: max_lr {json.dumps(config['max_lr'])}, "
                        f"weight_decay {json.dumps(config['weight_decay'])}")
        return
    parts = cell.split("; ")
    assert len(parts) == len(settings), cell
    for part, (group, values) in zip(parts, settings.items()):
        assert part.lower().startswith(group) and f"({values['params']:,} params): " in part, part
        for key, value in values.items():
            if key != "params":
                assert f"{key} {json_or_str(value)}" in part, (key, part)


def check_writeup(md_path, log_path, config):
    """Check every number of a generated write-up against its log and config; return the text."""
    md = Path(md_path).read_text(encoding="utf-8")
    assert "do not edit by hand" in md
    e = expected_numbers(raw_streams(log_path), config)

    # 1) every config value is in the config table, as JSON (strings bare)
    for key, value in flat_config(config):
        escaped = json_or_str(value).replace("|", chr(92) + "|")
        assert f"| `{key}` | `{escaped}` |" in md, f"config {key} missing"

    # 2) the summary rows say what the raw log and config say
    rows = table_rows(md)
    model = {**config, **config.get("model_config", {})}
    assert rows["arch"].split()[0] == config.get("arch", model.get("arch"))
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        assert f"{key} {model[key]}" in rows["arch"]
    assert first_number(rows["parameters"]) == config["n_params"]
    gpus = f"{config['n_gpus']} x " if config["n_gpus"] else ""
    assert rows["card"] == f"{gpus}{config['device_name']} (world_size {config['world_size']})"
    assert rows["data"] == f"{config['data_dir']} ({config['train_tokens']:,} train tokens)"
    check_optimizer(rows["optimizer"], config)
    shape, lr, warmup, ratio, min_lr, max_steps = re.fullmatch(
        r"(cosine|warmup-stable-decay): max_lr (\S+), (\d+) warmup steps, (?:then a cosine|flat, "
        r"then linearly over the last \S+ of the steps) down to min_lr_ratio (\S+) x max_lr = "
        r"(\S+) at max_steps (\d+)",
        rows["schedule"]).groups()
    assert shape == ("warmup-stable-decay" if config.get("lr_schedule") == "wsd" else "cosine")
    assert (float(lr), int(warmup), float(ratio), int(max_steps)) == tuple(
        config[k] for k in ("max_lr", "warmup_steps", "min_lr_ratio", "max_steps"))
    assert is_rounding_of(min_lr, {config["max_lr"] * config["min_lr_ratio"]})
    assert rows["steps"] == f"{e['steps']:,} of {config['max_steps']:,} (max_steps)"
    assert first_number(rows["tokens per step"]) == config["tokens_per_step"]
    assert first_number(rows["tokens seen"]) == e["tokens_seen"]
    assert first_number(rows["epochs"]) == pytest.approx(e["epochs"], abs=5e-4)
    for row, key, tol in (("wall time", "wall", 0.05), ("median tok/s", "tok/s", 0.5),
                          ("median MFU", "mfu", 5.1e-5)):
        if e[key] is None:
            assert rows[row] == "not logged", row
        else:
            shown = first_number(rows[row]) / (100 if key == "mfu" else 1)
            assert shown == pytest.approx(e[key], abs=tol), row
    for row, key in (("final train loss", "final_train"), ("final val loss", "final_val"),
                     ("best val loss", "best_val"), ("final HellaSwag acc_norm", "final_hella"),
                     ("best HellaSwag acc_norm", "best_hella")):
        if e[key] is None:
            assert rows[row] == "not logged", row
        else:
            value, step = parse_point(rows[row])
            assert step == e[key][0] and value == pytest.approx(e[key][1], abs=5e-5), row
    resumed = config.get("resumed_from") or []
    assert rows["resumes"] == (f"{len(resumed)}: " + ", ".join(resumed) if resumed else "none")
    changes = config.get("setting_changes") or []
    for c in changes:  # made on purpose with --resume: the write-up says when, from what, to what
        change = f"step {c['step']}: {c['setting']} {c['old']} -> {c['new']}"
        assert change in rows["setting changes"]
    if not changes:
        assert rows["setting changes"] == "none"
    unreadable = raw_unreadable(log_path)  # counted, the first shown, never silently dropped
    shown = [i for i, line in enumerate(unreadable) if line.strip()][:1]
    first = shown and f"the first{' non-blank' if shown[0] else ''}: {unreadable[shown[0]]!r}"
    assert rows["unreadable log lines"] == (f"{len(unreadable)} left out; {first or 'all blank'}"
                                            if unreadable else "none")
    if e["wall"] is not None:  # "~11 hours, ~$7", as build-nanogpt's README gives it
        hours, usd = e["wall"] / 3600, config.get("usd_per_hour")
        m = re.fullmatch(r"~([\d.]+) (hours|minutes|seconds)(?:, ~\$([\d.]+))? \(.*\)",
                         rows["time and cost"])
        assert m, rows["time and cost"]
        unit = {"hours": 1, "minutes": 60, "seconds": 3600}[m.group(2)]
        assert is_rounding_of(m.group(1), {hours * unit})
        assert (m.group(3) is None) == (not usd)
        assert not usd or is_rounding_of(m.group(3), {hours * usd})
    unfinished = re.search(r"The log ends after step ([\d,]+) of ([\d,]+)", md)
    if e["steps"] < config["max_steps"]:
        assert unfinished and unfinished.groups() == (f"{e['steps']:,}", f"{config['max_steps']:,}")
    else:
        assert not unfinished

    # 3) no number anywhere in the write-up that the log and config do not give
    text = md.replace("GPT-2 124M", " ").replace("GPT-3 124M", " ")
    if shown:
        text = text.replace(repr(unreadable[shown[0]]), " ")
    strings = [v for _, v in flat_config(config) if isinstance(v, str) and v]
    strings += [item for _, v in flat_config(config) if isinstance(v, list)
                for item in v if isinstance(item, str)]
    for s in sorted(strings, key=len, reverse=True):
        text = text.replace(s, " ")
    allowed = {wtp.REF_GPT2_VAL_LOSS, wtp.REF_GPT2_HELLA, wtp.REF_GPT3_HELLA, len(resumed),
               config["max_lr"] * config["min_lr_ratio"], e["epochs"], e["steps"],
               wtp.HELLASWAG_EXAMPLES, len(unreadable)}
    allowed.update(numbers_in(config))
    for target in config.get("targets") or []:  # tokens to reach it, in millions or billions
        allowed.update({target["reached"]["tokens"] / 1e6, target["reached"]["tokens"] / 1e9}
                       if target.get("reached") else ())
    for name in ("train", "val", "hella"):
        allowed.update(raw_streams(log_path).get(name, {}))  # steps
    for key in ("final_train", "final_val", "best_val", "final_hella", "best_hella"):
        allowed.update(e[key] or ())
    for n in (e["tokens_seen"], config["n_params"]):
        allowed.update({n, n / 1e6, n / 1e9})
    if e["wall"] is not None:
        allowed.update({e["wall"], e["wall"] / 3600, e["wall"] / 60})
        allowed.add(e["wall"] / 3600 * (config.get("usd_per_hour") or 0))
    allowed.update(x for x in (e["tok/s"], e["mfu"] and 100 * e["mfu"]) if x is not None)
    bad = [n for n in (m.group(0).replace(",", "") for m in NUMBER.finditer(text))
           if not is_rounding_of(n, allowed)]
    assert not bad, f"numbers in the write-up that the log and config do not give: {bad}"
    return md


def check_png(path):
    import matplotlib.image as mpimg

    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, "the figure has too few colours to hold curves"


def run_notebook(monkeypatch, logs, out_dir, write_up=False):
    """Execute the notebook in this process's environment, from the repo root."""
    nbformat, nbclient = pytest.importorskip("nbformat"), pytest.importorskip("nbclient")
    monkeypatch.setenv("SHOW_RESULTS_LOGS", logs)
    monkeypatch.setenv("SHOW_RESULTS_OUT", str(out_dir))
    monkeypatch.setenv("SHOW_RESULTS_WRITEUP", "1" if write_up else "0")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(REPO)}}).execute()
    return "".join(o.get("text", "") for cell in nb.cells for o in cell.get("outputs", []))


# -----------------------------------------------------------------------------
# the reader: train_gpt2.read_log, as load_run gives it

def read_streams(path):
    """log.txt -> {name: [(step, value)]}, as the write-up and the notebook see it."""
    return wtp.load_run(path).log


def test_read_log_sorts_and_the_later_record_wins(tmp_path):
    # a first run logs steps 0..9 and crashes; the resumed run restarts at step 5 and goes to 12
    first = "".join(f"{s} train {10 - s * 0.1:.6f}\n" for s in range(10))
    second = "".join(f"{s} train {5 - s * 0.1:.6f}\n" for s in range(5, 13))
    streams = read_streams(write_log(tmp_path / "log.txt", "5 val 3.5\n0 val 4.0\n" + first
                                     + "5 val 9.0\n" + second + "5 val 4.5\n"))
    assert streams["val"] == [(0, 4.0), (5, 4.5)]
    assert [s for s, _ in streams["train"]] == list(range(13))
    assert all(v == pytest.approx(10 - s * 0.1 if s < 5 else 5 - s * 0.1)
               for s, v in streams["train"])


@pytest.mark.parametrize("tail", ["3 train 9.1", "3 tra", "3", "3 train 9.1 "])
def test_read_log_drops_unterminated_last_line(tmp_path, tail):
    log = write_log(tmp_path / "log.txt", "0 train 10.0\n1 train 9.5\n2 train 9.3\n" + tail)
    assert read_streams(log)["train"] == [(0, 10.0), (1, 9.5), (2, 9.3)]
    assert wtp.load_run(log).unreadable == []  # still being written: not garbled


def test_read_log_skips_garbled_keeps_unknown(tmp_path):
    text = ("\n   \n0 train 10.0\nstep 1 | loss 9.0\n1 train\n1 train nine\n-1 train 3.0\n"
            "1.5 train 3.0\n\x00\x01\x02 binary\n2 train 9.0 extra\n1 my_metric 0.5\n"
            "1 train 9.5\r\n2 tok/s 12345.6\n")
    streams = read_streams(write_log(tmp_path / "log.txt", text))
    assert streams == {"train": [(0, 10.0), (1, 9.5)], "my_metric": [(1, 0.5)],
                       "tok/s": [(2, 12345.6)]}
    assert read_streams(write_log(tmp_path / "empty.txt", "")) == {}


def test_load_run_reads_the_config_beside_the_log(tmp_path):
    make_synthetic_run(tmp_path / "run_a")
    run = wtp.load_run(tmp_path / "run_a" / "log.txt")
    assert run.name == "run_a" and run.config["max_steps"] == 40
    assert wtp.load_run(tmp_path / "run_a").log == run.log
    with pytest.raises(wtp.RunError, match="no log file"):
        wtp.load_run(tmp_path / "missing")
    (tmp_path / "run_a" / "config.json").write_text("{not json")
    with pytest.raises(wtp.RunError, match="not valid JSON"):
        wtp.load_run(tmp_path / "run_a")


def test_plot_runs_empty_log_and_tokens_axis(tmp_path):
    write_log(tmp_path / "empty" / "log.txt", "")  # a run that has not logged yet
    wtp.plot_runs(tmp_path / "empty", tmp_path / "empty.png")
    assert (tmp_path / "empty.png").stat().st_size > 0
    make_synthetic_run(tmp_path / "a")
    make_synthetic_run(tmp_path / "b", total_batch=512, tokens_per_step=512)
    fig = wtp.plot_runs([wtp.load_run(tmp_path / "a"), wtp.load_run(tmp_path / "b")],
                        x_axis="tokens")
    ends = sorted(max(line.get_xdata(), default=0) for line in fig.axes[0].lines
                  if line.get_label().endswith(" val"))
    assert ends == [40 * 256, 40 * 512]


def vertical_lines(ax):
    """The x of each axvline of an axes (a line from the bottom to the top at one x)."""
    return sorted(line.get_xdata()[0] for line in ax.lines
                  if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
                  and list(line.get_ydata()) == [0, 1])


def test_figure_marks_resumes_setting_changes_and_a_hellaswag_subset(tmp_path):
    """Issue 38: a run scored on 50 HellaSwag examples was drawn against full-set references
    without a word, and its resumes and setting changes were nowhere on the curves."""
    make_synthetic_run(tmp_path / "run", resumed_from=["/ckpt/run/model_00025.pt"] * 2,
                       setting_changes=[{"step": 25, "setting": "max_steps", "old": 40, "new": 50},
                                        {"step": 32, "setting": "data_dir",
                                         "old": "/data/edu_fineweb10B", "new": "/data/openstax/"}])
    run = wtp.load_run(tmp_path / "run")
    assert wtp.curve_markers(run) == [(25, "resumed, max_steps 40 -> 50"),
                                      (32, "data_dir edu_fineweb10B -> openstax")]
    fig = wtp.plot_runs(run, tmp_path / "loss.png", x_axis="tokens")
    for ax in fig.axes:  # a thin line on both panels at each marker, with its label
        assert vertical_lines(ax) == [25 * 256, 32 * 256]
        assert [t.get_text().strip() for t in ax.texts if "->" in t.get_text()] == [
            "resumed, max_steps 40 -> 50", "data_dir edu_fineweb10B -> openstax"]
    title = fig.axes[1].get_title()
    assert "the first 50 examples only" in title and "all 10,042" in title
    md = wtp.render_markdown(run)
    assert "first 50 examples only, the references on all 10,042" in md and "Thin vertical" in md
    check_png(tmp_path / "loss.png")
    for limit in (None, 10042):  # the whole val set: nothing to say
        make_synthetic_run(tmp_path / f"full{limit}", hellaswag_limit=limit, resumed_from=[],
                           setting_changes=[])
        full = wtp.load_run(tmp_path / f"full{limit}")
        assert wtp.hellaswag_title([full]) == "" and wtp.curve_markers(full) == []
        assert "examples only" not in wtp.render_markdown(full)


TARGETS = [  # config.json's targets, as train_gpt2.py records them (issue 41)
    {"metric": "val", "target": 8.5, "applies": True, "note": None,
     "reached": {"step": 10, "tokens": 5_242_880_000, "train_hours": 10.63, "gpu_hours": 21.26,
                 "usd": 26.58, "value": 8.0131}},
    {"metric": "hella", "target": 0.2945, "applies": True, "note": None, "reached": None}]


def test_writeup_states_time_and_cost_to_each_target(tmp_path):
    config = make_synthetic_run(tmp_path / "run", targets=TARGETS, usd_per_hour=2.5)
    md = check_writeup(wtp.write_training_params(tmp_path / "run", tmp_path / "out"),
                       tmp_path / "run" / "log.txt", config)
    rows = table_rows(md)
    assert rows["val loss target"] == ("reached the val loss target (<= 8.5) at step 10, 5.24 B "
                                       "tokens, 10.6 h of training (21.3 GPU-hours, $26.58)")
    best = expected_numbers(raw_streams(tmp_path / "run" / "log.txt"), config)["best_hella"]
    assert rows["HellaSwag target"] == (f"did not reach GPT-2's HellaSwag (>= 0.2945): the best "
                                        f"HellaSwag {best[1]:.4f} (step {best[0]})")
    assert rows["time and cost"] == ("~9 seconds, ~$0.01 (wall time, evaluations included, "
                                     "at $2.5 per hour)")
    # the seed's README: "~11 hours, ~$7"; a default target on other data does not apply
    not_fineweb = {"metric": "val", "target": 3.2924, "applies": False, "reached": None,
                   "note": "GPT-2's score on FineWeb-Edu, and this run's data is not FineWeb-Edu"}
    run = wtp.Run("r", tmp_path / "log.txt", {"elapsed": [(0, 1.0), (9000, 39_600.0)]},
                  {"usd_per_hour": 0.65, "targets": [not_fineweb]})
    rows = dict(wtp.summary_rows(run))
    assert rows["time and cost"].startswith("~11 hours, ~$7 (")
    assert rows["val loss target"] == ("GPT-2's val loss (<= 3.2924): does not apply (GPT-2's "
                                       "score on FineWeb-Edu, and this run's data is not "
                                       "FineWeb-Edu)")
    del run.config["usd_per_hour"]  # no price given: no cost
    rows = dict(wtp.summary_rows(run))
    assert rows["time and cost"] == "~11 hours (wall time, evaluations included)"


def test_plot_runs_by_hours_with_targets(tmp_path):
    make_synthetic_run(tmp_path / "a", targets=TARGETS)
    make_synthetic_run(tmp_path / "b", targets=[{**TARGETS[0], "target": 7.5, "reached": None}])
    a, b = wtp.load_run(tmp_path / "a"), wtp.load_run(tmp_path / "b")
    fig = wtp.plot_runs([a, b], x_axis="hours")
    ax_loss = fig.axes[0]
    assert ax_loss.get_xlabel() == "wall time (hours, with evaluations)"
    val_end = [max(line.get_xdata()) for line in ax_loss.lines if line.get_label() == "a val"]
    assert val_end == [pytest.approx(a.log["elapsed"][-1][1] / 3600)]
    targets = {line.get_label(): line.get_ydata()[0] for line in ax_loss.lines
               if "target" in line.get_label()}
    assert targets == {"a target <= 8.5": 8.5, "b target <= 7.5": 7.5,
                       "a val loss target reached (step 10)": 8.0131}
    # a run without elapsed records: every run by step, and the axis says why
    write_log(tmp_path / "c" / "log.txt", "0 train 10.0\n1 train 9.0\n")
    fig = wtp.plot_runs([a, wtp.load_run(tmp_path / "c")], x_axis="hours")
    assert fig.axes[0].get_xlabel() == "optimizer step (c: no hours)"
    with pytest.raises(wtp.RunError, match="x_axis 'time'"):
        wtp.plot_runs(a, x_axis="time")


# -----------------------------------------------------------------------------
# the write-up: every number matches its log and config

def test_writeup_of_a_resumed_run(tmp_path):
    config = make_synthetic_run(tmp_path / "logs" / "run_a")
    out = tmp_path / "results" / "run_a"
    md_path = wtp.write_training_params(tmp_path / "logs" / "run_a", out)
    assert md_path == out / "training_params.md"
    md = check_writeup(md_path, tmp_path / "logs" / "run_a" / "log.txt", config)
    assert "![loss and HellaSwag](loss.png)" in md
    check_png(out / "loss.png")
    for fname in ("log.txt", "config.json"):  # the results folder stands on its own
        assert (out / fname).read_bytes() == (tmp_path / "logs" / "run_a" / fname).read_bytes()


def test_writeup_of_a_partial_cpu_run_without_evals(tmp_path):
    log_dir = tmp_path / "run_b"
    config = make_config(log_dir, data_dir="/data/openstax_corpus", resumed_from=[], max_steps=100,
                         hellaswag_limit=None, device="cpu", device_name="cpu", n_gpus=0,
                         world_size=1)
    write_log(log_dir / "log.txt", "".join(
        f"{s} train {10 - 0.05 * s:.6f}\n{s} tok/s {1000 + s}.0\n" for s in range(7)))
    (log_dir / "config.json").write_text(json.dumps(config))
    md = check_writeup(wtp.write_training_params(log_dir, tmp_path / "out"), log_dir / "log.txt",
                       config)
    rows = table_rows(md)
    assert (rows["final val loss"] == rows["best HellaSwag acc_norm"] == rows["wall time"]
            == "not logged")
    assert "The log ends after step 7 of 100" in md
    check_png(tmp_path / "out" / "loss.png")


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_writeup_shows_the_optimizer_settings(tmp_path, optimizer):
    settings = (MUON_SETTINGS if optimizer == "muon"
                else {"adamw": {**MUON_SETTINGS["adamw"], "params": 124_475_904}})
    config = make_synthetic_run(tmp_path / "run", optimizer=optimizer, optimizer_settings=settings)
    # check_optimizer: every group, parameter count and setting is in the optimizer row
    md = check_writeup(wtp.write_training_params(tmp_path / "run", tmp_path / "out"),
                       tmp_path / "run" / "log.txt", config)
    assert ("Muon" in table_rows(md)["optimizer"]) == (optimizer == "muon")


def test_writeup_updates_the_same_run_and_refuses_another(tmp_path):
    log_dir, out = tmp_path / "run_c", tmp_path / "results" / "run_c"
    config = make_synthetic_run(log_dir)
    wtp.write_training_params(log_dir, out)
    with open(log_dir / "log.txt", "a") as f:  # the same run, logged further: updating is fine
        f.write("\n40 val 4.5000\n")
    check_writeup(wtp.write_training_params(log_dir, out), log_dir / "log.txt", config)
    other = tmp_path / "other" / "run_c"
    make_synthetic_run(other, max_steps=30, resume_at=5, crash_at=10)
    with pytest.raises(wtp.RunError, match="different run"):
        wtp.write_training_params(other, out)
    assert (out / "log.txt").read_bytes() == (log_dir / "log.txt").read_bytes()
    wtp.write_training_params(other, out, force=True)
    assert (out / "log.txt").read_bytes() == (other / "log.txt").read_bytes()


def test_writeup_counts_unreadable_lines_and_shows_no_nan_it_did_not_log(tmp_path, capsys):
    """Issue 38: lines that are not records were dropped without a word, and one nan record (a
    diverged eval, an MFU of nothing) turned a median or a best into "nan"."""
    log_dir = tmp_path / "run"
    config = make_config(log_dir, max_steps=20, resumed_from=[], setting_changes=[])
    (log_dir / "config.json").parent.mkdir(parents=True)
    (log_dir / "config.json").write_text(json.dumps(config))
    lines = []
    for s in range(21):
        if s % 10 == 0:  # the eval at step 10 diverged
            lines.append(f"{s} val " + ("nan" if s == 10 else f"{9 - 0.05 * s:.4f}"))
        if s < 20:
            lines += [f"{s} train {10 - 0.1 * s:.6f}",
                      f"{s} mfu " + ("nan" if s == 3 else "0.4000"),
                      f"{s} elapsed {0.5 * (s + 1):.1f}"]
        if s == 12:
            lines += ["12 val 3.2a", "\x00\x00\x00", "13 train"]  # garbled: 3 lines
    write_log(log_dir / "log.txt", "\n".join(lines) + "\n")
    assert wtp.main([str(log_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "3 lines could not be read and are left out (the first: '12 val 3.2a')" in printed
    md = (tmp_path / "out" / "training_params.md").read_text()
    rows = table_rows(md)
    assert rows["unreadable log lines"] == "3 left out; the first: '12 val 3.2a'"
    assert "3 lines of log.txt are not records" in md
    assert rows["median MFU"] == "40.00 %" and rows["best val loss"] == "8.0000 (step 20)"
    assert "nan" not in md.lower()  # the nan records are in the log, but decide nothing here
    # a run whose last eval logged nan: the write-up says so, as logged
    write_log(log_dir / "log.txt", "0 val 9.0\n0 train 10.0\n1 val nan\n")
    rows = table_rows(wtp.render_markdown(wtp.load_run(log_dir)))
    assert rows["final val loss"] == "nan (step 1)" and rows["best val loss"] == "9.0000 (step 0)"
    assert rows["unreadable log lines"] == "none"


def test_cli(tmp_path):
    config = make_synthetic_run(tmp_path / "run_d")
    (tmp_path / "run_d" / "samples.txt").write_text("10 sample0 \"Hello, I'm a language model,\"\n")
    script, out = REPO / "results" / "write_training_params.py", tmp_path / "res"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "run_d"), "--out", str(out)],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0, r.stderr
    check_writeup(out / "training_params.md", tmp_path / "run_d" / "log.txt", config)
    assert (out / "samples.txt").is_file() and (out / "loss.png").is_file()
    # bad input: one line on stderr, exit code 1, nothing written
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")],
                       capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error:")
    assert len(r.stderr.strip().splitlines()) == 1
    write_log(tmp_path / "empty" / "log.txt", "")
    assert wtp.main([str(tmp_path / "empty"), "--out", str(tmp_path / "empty_out")]) == 1
    assert not (tmp_path / "empty_out" / "training_params.md").exists()


# -----------------------------------------------------------------------------
# the notebook, headless

def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert all(c.outputs == [] and c.execution_count is None
               for c in nb.cells if c.cell_type == "code")


def test_notebook_on_synthetic_resumed_and_partial_logs(tmp_path, monkeypatch):
    config = make_synthetic_run(tmp_path / "run_a")
    # run_b: no config, its last line cut off
    write_log(tmp_path / "run_b" / "log.txt", "0 train 10.9\n1 train 10.1\n2 tra")
    monkeypatch.setenv("SHOW_RESULTS_X_AXIS", "hours")  # run_b has no elapsed records: by step
    logs = f"{tmp_path}/run_a/log.txt:{tmp_path}/run_b:{tmp_path}/missing"
    printed = run_notebook(monkeypatch, logs, tmp_path / "out")
    check_png(tmp_path / "out" / "loss_compare.png")
    assert "skipping" in printed and "missing" in printed and "no config.json" in printed
    e = expected_numbers(raw_streams(tmp_path / "run_a" / "log.txt"), config)
    run_a, run_b = printed.split("\nrun_a\n")[1].split("\nrun_b\n")
    final_val = re.search(r"final val loss +([\d.]+) \(step (\d+)\)", run_a).groups()
    assert final_val == (f"{e['final_val'][1]:.4f}", "40")
    assert re.search(r"steps +(\S+)", run_b).group(1) == "2"
    assert not (tmp_path / "out" / "training_params.md").exists()  # the write-up is off


def test_notebook_without_a_log_says_what_to_do(tmp_path):
    """`jupyter execute show_results.ipynb` as a user runs it (no PYTHONPATH: the cwd is the
    checkout), where there is no log/log.txt yet: it fails with one line that says what to do."""
    pytest.importorskip("nbclient")
    for name in ("show_results.ipynb", "results/__init__.py", "results/write_training_params.py",
                 "train_gpt2.py", "hellaswag.py"):  # the write-up reads log.txt with train_gpt2
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SHOW_RESULTS_") and k != "PYTHONPATH"}
    cmd = [sys.executable, "-m", "jupyter", "execute", "show_results.ipynb"]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
                       timeout=300)
    assert r.returncode != 0
    last = (r.stdout + r.stderr).strip().splitlines()[-1]
    assert last.startswith("RunError: no training log at log/log.txt"), last
    assert "python train_gpt2.py" in last and "SHOW_RESULTS_LOGS=path/to/log.txt" in last


@pytest.mark.skipif(not TRAINER.exists(), reason="train_gpt2.py is not in the repo")
def test_notebook_on_tiny_cpu_training_run(tmp_path, monkeypatch):
    data_dir, log_dir = tmp_path / "data", tmp_path / "tiny_cpu"
    rng = np.random.default_rng(0)
    data_dir.mkdir()
    for name in ("x_val_000000.npy", "x_train_000001.npy"):
        np.save(data_dir / name, rng.integers(0, 50257, size=20_000, dtype=np.uint16))
    cmd = [sys.executable, str(TRAINER), "--data_dir", str(data_dir), "--log_dir", str(log_dir),
           "--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64",
           "--seq_len", "32", "--micro_batch", "4", "--total_batch", "256", "--max_steps", "10",
           "--warmup_steps", "2", "--val_every", "5", "--val_tokens", "2048",
           "--hellaswag_every", "0", "--sample_every", "0", "--checkpoint_every", "0",
           "--compile", "0", "--device", "cpu"]
    r = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="2"),
                       capture_output=True, text=True,
                       check=False, timeout=600)
    assert r.returncode == 0, f"trainer failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    streams = raw_streams(log_dir / "log.txt")
    assert max(streams["train"]) == 9 and max(streams["val"]) == 10
    assert all(math.isfinite(v) for v in streams["train"].values())

    out = tmp_path / "results" / "tiny_cpu"
    run_notebook(monkeypatch, str(log_dir / "log.txt"), out, write_up=True)
    check_png(out / "loss.png")
    check_writeup(out / "training_params.md", log_dir / "log.txt",
                  json.loads((log_dir / "config.json").read_text()))
