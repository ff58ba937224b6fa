"""
Tests for the reporting side: the log parser and write-up generator in
results/write_training_params.py, and show_results.ipynb run headless.

    python -m pytest tests/test_results.py -q

The write-up test recomputes every number of a generated training_params.md from the raw
log.txt and config.json with its own small parser (not the module's), so a wrong number in the
write-up fails here. The last test trains a tiny model on CPU with train_gpt2.py and runs the
notebook on the log it writes.
"""

import json
import math
import os
import re
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "results"))
import write_training_params as wtp  # noqa: E402

NOTEBOOK = REPO / "show_results.ipynb"
TRAINER = REPO / "train_gpt2.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# -----------------------------------------------------------------------------
# helpers

def write_log(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def make_config(log_dir, **overrides):
    """A config.json with the keys the trainer writes (contract), small numbers."""
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
        "tokens_per_step": 256, "train_tokens": 7_000, "val_tokens_used": 2048,
    }
    config.update(overrides)
    return config


def make_synthetic_run(log_dir, max_steps=40, resume_at=25, crash_at=30, config_overrides=None):
    """
    Write log.txt + config.json of a run that crashed after step crash_at-1, was resumed from
    the checkpoint at step resume_at (re-logging steps resume_at.. with new values) and then
    finished, with garbage lines in between and an unterminated line at the end.
    """
    rng = np.random.default_rng(0)
    config = make_config(log_dir, max_steps=max_steps, **(config_overrides or {}))
    lines = []

    def segment(first, last, t0):
        for step in range(first, last + 1):
            if step % config["val_every"] == 0 or step == max_steps:
                lines.append(f"{step} val {9.0 - 0.1 * step + rng.uniform(-0.05, 0.05):.4f}")
            if step % config["hellaswag_every"] == 0 or step == max_steps:
                lines.append(f"{step} hella {0.25 + 0.001 * step + rng.uniform(0, 0.01):.4f}")
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
    text = "\n".join(lines) + "\n" + f"{max_steps - 1} train 0.12"  # unterminated: dropped
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "log.txt").write_text(text, encoding="utf-8")
    (log_dir / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return config


def raw_streams(log_path):
    """The test's own reading of a log (independent of the module): {name: {step: value}}."""
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


def flat_config(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from flat_config(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def expected_numbers(streams, config):
    """Every quantity the write-up may state, recomputed from the raw log and config."""
    e = {}
    train = streams.get("train", {})
    last = max(train) if train else None
    e["train_steps"] = last + 1 if train else None
    e["final_train"] = (last, train[last]) if train else None
    e["tokens_seen"] = e["train_steps"] * config["tokens_per_step"] if train else None
    e["epochs"] = e["tokens_seen"] / config["train_tokens"] if train else None
    for name, key in (("val", "val"), ("hella", "hella"), ("hella_acc", "hella_acc")):
        points = streams.get(name, {})
        e[f"final_{key}"] = (max(points), points[max(points)]) if points else None
    val, hella = streams.get("val", {}), streams.get("hella", {})
    e["best_val"] = min(((s, v) for s, v in val.items()), key=lambda p: (p[1], p[0]), default=None)
    e["best_hella"] = max(((s, v) for s, v in hella.items()), key=lambda p: (p[1], -p[0]), default=None)
    elapsed = streams.get("elapsed", {})
    e["wall"] = elapsed[max(elapsed)] if elapsed else None
    for name in ("tok/s", "dt", "mfu"):
        values = list(streams.get(name, {}).values())
        e[name] = float(np.median(values)) if values else None
    for name in ("val", "hella"):
        steps = sorted(streams.get(name, {}))
        e[f"{name}_cadence"] = int(np.median(np.diff(steps))) if len(steps) > 1 else None
    return e


def allowed_numbers(streams, config, e):
    """The values a number in the write-up may be a rounding of."""
    allowed = {wtp.REF_GPT2_VAL_LOSS, wtp.REF_GPT2_HELLA, wtp.REF_GPT3_HELLA}
    for _, v in flat_config(config):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            allowed.add(float(v))
    for name in ("train", "val", "hella", "hella_acc"):
        allowed.update(streams.get(name, {}))  # steps
    for key in ("final_train", "final_val", "best_val", "final_hella", "best_hella", "final_hella_acc"):
        if e[key]:
            allowed.update(e[key])
    for key in ("train_steps", "epochs", "wall", "tok/s", "dt", "val_cadence", "hella_cadence"):
        if e[key] is not None:
            allowed.add(e[key])
    for n in (e["tokens_seen"], config.get("train_tokens"), config.get("n_params")):
        if n:
            allowed.update({n, n / 1e6, n / 1e9})
    if e["wall"] is not None:
        allowed.add(e["wall"] / 3600)
    if e["mfu"] is not None:
        allowed.add(100 * e["mfu"])
    allowed.add(config["micro_batch"] * config["seq_len"] * config["world_size"]
                * config["grad_accum_steps"])
    allowed.add(config["max_lr"] * config["min_lr_ratio"])
    allowed.add(len(config.get("resumed_from") or []))
    return allowed


NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?:[eE][-+]?\d+)?")


def numbers_in(text):
    """Every number written in text, as strings without thousands separators."""
    return [m.group(0).rstrip(",").replace(",", "") for m in NUMBER.finditer(text)]


def is_rounding_of(number, allowed):
    """Is the written number some allowed value rounded to the digits it shows?"""
    x = float(number)
    tol = 0.5 * 10.0 ** Decimal(number).as_tuple().exponent * (1 + 1e-9) + 1e-12
    return any(abs(x - a) <= tol for a in allowed)


def table_rows(md):
    """All '| key | value |' rows of the markdown as {key: value} (first occurrence)."""
    rows = {}
    for line in md.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) == 2 and cells[0] not in rows:
            rows[cells[0]] = cells[1]
    return rows


def parse_point(cell):
    m = re.fullmatch(r"(-?[\d.]+) \(step (\d+)\)", cell)
    assert m, f"not a '(value) (step N)' cell: {cell!r}"
    return float(m.group(1)), int(m.group(2))


def check_writeup(md_path, log_path, config):
    """Check every number of a generated write-up against its log and config."""
    md = Path(md_path).read_text(encoding="utf-8")
    streams = raw_streams(log_path)
    e = expected_numbers(streams, config)

    # 1) every config key/value is in the table, as JSON (strings bare)
    for key, value in flat_config(config):
        shown = value if isinstance(value, str) else json.dumps(value)
        shown = shown.replace("|", "\\|")
        assert f"| `{key}` | `{shown}` |" in md, f"config {key}={value!r} missing from the write-up"

    # 2) the summary rows equal the numbers recomputed from the raw log
    rows = table_rows(md)
    done = rows["optimizer steps done"].replace(",", "")
    assert done.split()[0] == str(e["train_steps"])
    if config.get("max_steps"):
        assert f"of {config['max_steps']} (max_steps)" in done
    assert rows["tokens seen"].split()[0].replace(",", "") == str(e["tokens_seen"])
    assert float(rows["epochs over the train data"]) == pytest.approx(e["epochs"], abs=5e-4)
    for row, key, tol in (("last train loss", "final_train", 5e-5), ("last val loss", "final_val", 5e-5),
                          ("best val loss", "best_val", 5e-5), ("last HellaSwag acc_norm", "final_hella", 5e-5),
                          ("best HellaSwag acc_norm", "best_hella", 5e-5)):
        if e[key] is None:
            assert rows[row] == "not logged", row
        else:
            value, step = parse_point(rows[row])
            assert step == e[key][0], row
            assert value == pytest.approx(e[key][1], abs=tol), row
    if e["wall"] is not None:
        assert float(rows["wall time"].split()[0]) == pytest.approx(e["wall"], abs=0.05)
    else:
        assert rows["wall time"] == "not logged"
    if e["tok/s"] is not None:
        assert float(rows["median throughput"].split()[0].replace(",", "")) == pytest.approx(e["tok/s"], abs=0.5)
    if e["mfu"] is not None:
        assert float(rows["median MFU"].split()[0]) == pytest.approx(100 * e["mfu"], abs=0.005)
    else:
        assert "median MFU" not in rows
    if e["dt"] is not None:
        assert float(rows["median step time"].split()[0]) == pytest.approx(e["dt"], abs=0.05)
    mcfg = config.get("model_config", {})
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        assert rows[key] == f"`{mcfg[key]}`", key
    assert rows["parameters"].split()[0].replace(",", "") == str(config["n_params"])

    # 3) the numbers in the sentences say what the config and log say
    def find(pattern):
        m = re.search(pattern, md)
        assert m, f"write-up has no line matching {pattern!r}"
        return m.groups()

    mb, t, ws, ga, total = find(r"- batch: (\d+) sequences x (\d+) tokens x (\d+) process\(es\) x "
                                r"(\d+) accumulation step\(s\) = ([\d,]+) tokens per optimizer step")
    assert [int(mb), int(t), int(ws), int(ga)] == [config[k] for k in
                                                   ("micro_batch", "seq_len", "world_size", "grad_accum_steps")]
    assert int(total.replace(",", "")) == int(mb) * int(t) * int(ws) * int(ga)
    lr, warmup, ratio, min_lr = find(r"max_lr (\S+), (\d+) warmup steps, decaying to min_lr_ratio (\S+) "
                                     r"x max_lr = (\S+)\n")
    assert (float(lr), int(warmup), float(ratio)) == (config["max_lr"], config["warmup_steps"],
                                                      config["min_lr_ratio"])
    assert is_rounding_of(min_lr, {config["max_lr"] * config["min_lr_ratio"]})
    if config.get("n_gpus") and config.get("device_name") != "cpu":
        n_gpus, device, world = find(r"- hardware: (\d+) x `([^`]*)`, world_size (\d+)")
        assert (int(n_gpus), device, int(world)) == (config["n_gpus"], config["device_name"],
                                                     config["world_size"])
    else:
        device, world = find(r"- hardware: `([^`]*)`, world_size (\d+)")
        assert (device, int(world)) == (config["device_name"], config["world_size"])
    for name, key in (("val loss", "val_every"), ("HellaSwag", "hellaswag_every")):
        if config[key]:
            assert int(find(rf"{name} every (\d+) steps")[0]) == config[key]
        else:
            assert f"{name} off ({key} 0)" in md
    for name, key in (("val", "val_cadence"), ("HellaSwag", "hella_cadence")):
        if e[key] is not None:
            assert int(find(rf"{name} records every (\d+) steps \(log\)")[0]) == e[key]
        else:
            assert f"{name} records every" not in md
    if config.get("resumed_from"):
        assert int(find(r"resumed (\d+) time\(s\)")[0]) == len(config["resumed_from"])
    else:
        assert "resumed" not in md.split("## All config values")[0]
    if e["train_steps"] < config["max_steps"]:
        assert find(r"ends after step (\d+) of (\d+)") == (str(e["train_steps"]), str(config["max_steps"]))

    # 4) no number anywhere in the write-up that the log and config do not give
    text = md
    for _, value in sorted(flat_config(config), key=lambda kv: -len(str(kv[1]))):
        if isinstance(value, str) and value:
            text = text.replace(value, " ")
        elif isinstance(value, list):
            for item in value:
                text = text.replace(str(item), " ")
    for phrase in ("GPT-2 124M", "GPT-3 124M"):
        text = text.replace(phrase, " ")
    allowed = allowed_numbers(streams, config, e)
    bad = [n for n in numbers_in(text) if not is_rounding_of(n, allowed)]
    assert not bad, f"numbers in the write-up that the log/config do not give: {bad}"
    return md


def check_png(path, min_bytes=10_000):
    import matplotlib.image as mpimg

    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert path.stat().st_size > min_bytes, f"{path} is only {path.stat().st_size} bytes"
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
    assert float(pixels[..., :3].var()) > 1e-3, "the figure is (almost) a single colour"
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, "the figure has too few colours to hold curves"


def run_notebook(monkeypatch, logs, out_dir, write_up=False):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("SHOW_RESULTS_LOGS", ",".join(str(p) for p in logs))
    monkeypatch.setenv("SHOW_RESULTS_OUT", str(out_dir))
    monkeypatch.setenv("SHOW_RESULTS_WRITEUP", "1" if write_up else "0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(REPO)}})
    client.execute()
    return nb


def notebook_text(nb):
    out = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            out.append(o.get("text", "") if o.get("output_type") == "stream" else "")
    return "".join(out)


# -----------------------------------------------------------------------------
# (1) the parser on hand-written logs

def test_parse_log_basic_sorted(tmp_path):
    log = write_log(tmp_path / "log.txt", "5 val 3.5000\n0 val 4.0000\n0 train 10.900000\n"
                                          "1 train 10.500000\n0 hella 0.2500\n")
    streams = wtp.parse_log(log)
    assert streams["val"] == [(0, 4.0), (5, 3.5)]
    assert streams["train"] == [(0, 10.9), (1, 10.5)]
    assert streams["hella"] == [(0, 0.25)]


def test_parse_log_resumed_later_record_wins(tmp_path):
    # first run logs steps 0..9, crashes; the resumed run restarts at step 5 and goes to 12
    first = "".join(f"{s} train {10 - s * 0.1:.6f}\n" for s in range(10))
    second = "".join(f"{s} train {5 - s * 0.1:.6f}\n" for s in range(5, 13))
    streams = wtp.parse_log(write_log(tmp_path / "log.txt", first + "5 val 9.0\n" + second + "5 val 4.0\n"))
    train = dict(streams["train"])
    assert [s for s, _ in streams["train"]] == list(range(13))
    assert all(train[s] == pytest.approx(10 - s * 0.1) for s in range(5))
    assert all(train[s] == pytest.approx(5 - s * 0.1) for s in range(5, 13))
    assert streams["val"] == [(5, 4.0)]


@pytest.mark.parametrize("tail", ["3 train 9.1", "3 tra", "3", "3 train 9.1 "])
def test_parse_log_drops_unterminated_last_line(tmp_path, tail):
    log = write_log(tmp_path / "log.txt", "0 train 10.0\n1 train 9.5\n2 train 9.3\n" + tail)
    assert wtp.parse_log(log)["train"] == [(0, 10.0), (1, 9.5), (2, 9.3)]


def test_parse_log_skips_garbled_keeps_unknown(tmp_path):
    text = ("\n   \n0 train 10.0\nstep 1 | loss 9.0\n1 train\n1 train nine\n-1 train 3.0\n"
            "1.5 train 3.0\n\x00\x01\x02 binary\n2 train 9.0 extra\n1 my_metric 0.5\n"
            "1 train 9.5\r\n2 tok/s 12345.6\n")
    streams = wtp.parse_log(write_log(tmp_path / "log.txt", text))
    assert streams["train"] == [(0, 10.0), (1, 9.5)]
    assert streams["my_metric"] == [(1, 0.5)]
    assert streams["tok/s"] == [(2, 12345.6)]
    assert set(streams) == {"train", "my_metric", "tok/s"}


def test_parse_log_empty_and_train_only(tmp_path):
    assert wtp.parse_log(write_log(tmp_path / "empty" / "log.txt", "")) == {}
    fig = wtp.plot_run(tmp_path / "empty", tmp_path / "empty.png")  # a run that has not logged yet
    assert fig is not None and (tmp_path / "empty.png").stat().st_size > 0
    log = write_log(tmp_path / "a" / "log.txt", "0 train 10.0\n1 train 9.0\n")
    s = wtp.summarize_run(wtp.load_run(log.parent))
    assert s["train_steps"] == 2 and s["final_train"] == (1, 9.0)
    assert s["final_val"] is None and s["best_hella"] is None and s["tokens_seen"] is None


def test_load_run_reads_config_beside_log(tmp_path):
    make_synthetic_run(tmp_path / "run_a")
    run = wtp.load_run(tmp_path / "run_a" / "log.txt")
    assert run.name == "run_a" and run.config["max_steps"] == 40
    assert wtp.load_run(tmp_path / "run_a").log == run.log
    with pytest.raises(wtp.RunError):
        wtp.load_run(tmp_path / "missing")
    (tmp_path / "run_a" / "config.json").write_text("{not json")
    with pytest.raises(wtp.RunError):
        wtp.load_run(tmp_path / "run_a")


def test_summary_of_resumed_synthetic_run(tmp_path):
    config = make_synthetic_run(tmp_path / "run_a")
    s = wtp.summarize_run(wtp.load_run(tmp_path / "run_a"))
    e = expected_numbers(raw_streams(tmp_path / "run_a" / "log.txt"), config)
    assert s["train_steps"] == 40 and s["tokens_seen"] == 40 * 256
    assert s["final_val"][0] == 40 and s["final_hella"][0] == 40
    for key in ("final_train", "final_val", "best_val", "final_hella", "best_hella"):
        assert s[key] == e[key]
    assert s["wall_time_s"] == e["wall"] and s["epochs"] == pytest.approx(40 * 256 / 7000)
    assert s["val_cadence"] == 10 and s["hella_cadence"] == 20


# -----------------------------------------------------------------------------
# (2) generated write-up: every number matches its log and config

def test_writeup_numbers_match_log_and_config(tmp_path):
    config = make_synthetic_run(tmp_path / "logs" / "run_a")
    md_path = wtp.write_training_params(tmp_path / "logs" / "run_a", tmp_path / "results" / "run_a")
    assert md_path == tmp_path / "results" / "run_a" / "training_params.md"
    md = check_writeup(md_path, tmp_path / "logs" / "run_a" / "log.txt", config)
    assert "![loss and HellaSwag](loss.png)" in md
    assert "do not edit by hand" in md
    assert "resumed 1 time(s)" in md
    assert "not comparable" not in md  # the data dir says FineWeb-Edu
    check_png(tmp_path / "results" / "run_a" / "loss.png")
    for fname in ("log.txt", "config.json"):  # the results folder stands on its own
        assert (tmp_path / "results" / "run_a" / fname).read_bytes() == \
            (tmp_path / "logs" / "run_a" / fname).read_bytes()


def test_writeup_partial_run_without_evals(tmp_path):
    log_dir = tmp_path / "run_b"
    config = make_config(log_dir, data_dir="/data/openstax_corpus", resumed_from=[],
                         max_steps=100, hellaswag_limit=None)
    del config["val_tokens_used"]
    lines = [f"{s} train {10 - 0.05 * s:.6f}\n{s} tok/s {1000 + s}.0\n{s} dt {50 + s}.00\n" for s in range(7)]
    write_log(log_dir / "log.txt", "".join(lines))
    (log_dir / "config.json").write_text(json.dumps(config))
    md = check_writeup(wtp.write_training_params(log_dir, tmp_path / "out"), log_dir / "log.txt", config)
    rows = table_rows(md)
    assert rows["last val loss"] == "not logged" and rows["best HellaSwag acc_norm"] == "not logged"
    assert rows["wall time"] == "not logged"
    assert "not comparable" in md  # not FineWeb-Edu data
    assert "ends after step 7 of 100" in md
    check_png(tmp_path / "out" / "loss.png")


def test_fineweb_edu_detection(tmp_path):
    assert wtp.is_fineweb_edu({"data_dir": "edu_fineweb10B"}) is True
    assert wtp.is_fineweb_edu({"data_dir": "/data/fineweb10B"}) is False
    assert wtp.is_fineweb_edu({}) is None
    # fineweb.py's manifest.json, when the data dir is here, says what the shards were made from
    named_edu = tmp_path / "edu_fineweb10B"
    named_edu.mkdir()
    (named_edu / "manifest.json").write_text(json.dumps(
        {"settings": {"input": {"type": "files", "paths": ["corpus/openstax_textbooks_ccby.jsonl.gz"]}}}))
    assert wtp.is_fineweb_edu({"data_dir": str(named_edu)}) is False
    plain = tmp_path / "data"
    plain.mkdir()
    (plain / "manifest.json").write_text(json.dumps(
        {"settings": {"input": {"type": "hub", "path": "HuggingFaceFW/fineweb-edu", "name": "sample-10BT"}}}))
    assert wtp.is_fineweb_edu({"data_dir": str(plain)}) is True


def test_writeup_after_the_run_went_on_and_refuses_another_run(tmp_path):
    log_dir = tmp_path / "run_c"
    config = make_synthetic_run(log_dir)
    out = tmp_path / "results" / "run_c"
    wtp.write_training_params(log_dir, out)
    with open(log_dir / "log.txt", "a") as f:  # the same run logged further: update is fine
        f.write("\n40 val 4.5000\n")
    check_writeup(wtp.write_training_params(log_dir, out), log_dir / "log.txt", config)
    other = tmp_path / "other" / "run_c"
    make_synthetic_run(other, max_steps=30, resume_at=5, crash_at=10)
    with pytest.raises(wtp.RunError, match="different run"):
        wtp.write_training_params(other, out)
    assert (out / "log.txt").read_bytes() == (log_dir / "log.txt").read_bytes()
    wtp.write_training_params(other, out, force=True)
    assert (out / "log.txt").read_bytes() == (other / "log.txt").read_bytes()


def test_cli(tmp_path):
    config = make_synthetic_run(tmp_path / "run_d")
    script = REPO / "results" / "write_training_params.py"
    out = tmp_path / "res"
    (tmp_path / "run_d" / "samples.txt").write_text("step 10: Hello, I'm a language model,\n")
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "run_d"), "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    check_writeup(out / "training_params.md", tmp_path / "run_d" / "log.txt", config)
    assert (out / "samples.txt").is_file() and (out / "loss.png").is_file()
    # bad input: one line on stderr, exit code 1, no traceback
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert wtp.main([str(tmp_path / "run_d"), "--out", str(out)]) == 0
    write_log(tmp_path / "empty" / "log.txt", "")
    assert wtp.main([str(tmp_path / "empty"), "--out", str(tmp_path / "empty_out")]) == 1
    assert not (tmp_path / "empty_out" / "training_params.md").exists()


# -----------------------------------------------------------------------------
# (3) the notebook, headless

def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert 'LOG_PATHS = ["log/log.txt"]' in nb.cells[1].source
    assert "SHOW_RESULTS_LOGS" in nb.cells[1].source


def test_notebook_on_synthetic_resumed_and_partial_logs(tmp_path, monkeypatch):
    make_synthetic_run(tmp_path / "run_a")
    write_log(tmp_path / "run_b" / "log.txt", "0 train 10.9\n1 train 10.1\n2 tra")  # no config, cut off
    logs = [tmp_path / "run_a" / "log.txt", tmp_path / "run_b", tmp_path / "missing"]
    nb = run_notebook(monkeypatch, logs, tmp_path / "out")
    check_png(tmp_path / "out" / "loss_compare.png")
    printed = notebook_text(nb)
    assert "run_a" in printed and "run_b" in printed and "no config.json" in printed
    assert "skipping" in printed and "missing" in printed
    assert not (tmp_path / "out" / "training_params.md").exists()  # WRITE_UP is off


def _write_shards(data_dir, n_tokens=20_000):
    rng = np.random.default_rng(0)
    data_dir.mkdir(parents=True)
    for name in ("x_val_000000.npy", "x_train_000001.npy"):
        np.save(data_dir / name, rng.integers(0, 50257, size=n_tokens, dtype=np.uint16))


@pytest.mark.skipif(not TRAINER.exists(), reason="train_gpt2.py is not in the repo")
def test_notebook_on_tiny_cpu_training_run(tmp_path, monkeypatch):
    data_dir, log_dir = tmp_path / "data", tmp_path / "tiny_cpu"
    _write_shards(data_dir)
    cmd = [sys.executable, str(TRAINER), "--data_dir", str(data_dir), "--log_dir", str(log_dir),
           "--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--block_size", "64",
           "--seq_len", "32", "--micro_batch", "4", "--total_batch", "256", "--max_steps", "10",
           "--warmup_steps", "2", "--val_every", "5", "--val_tokens", "2048",
           "--hellaswag_every", "0", "--sample_every", "0", "--checkpoint_every", "0",
           "--compile", "0", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"trainer failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    log_path = log_dir / "log.txt"
    streams = raw_streams(log_path)
    assert max(streams["train"]) == 9 and max(streams["val"]) == 10
    assert all(math.isfinite(v) for v in streams["train"].values())

    out = tmp_path / "results" / "tiny_cpu"
    run_notebook(monkeypatch, [log_path], out, write_up=True)
    check_png(out / "loss.png")
    config = json.loads((log_dir / "config.json").read_text())
    check_writeup(out / "training_params.md", log_path, config)
