"""
Every script's flags at their extremes (0, huge, empty, a path below a file or where nothing can be
made): one line "error: ...", exit code 1 (argparse's own errors in fineweb.py: exit code 2, as it
documents), and nothing written anywhere: not in the test's folder, not in the repo (an empty
--local_dir or --out used to mean a default folder there).

All in-process main(argv) calls that fail before any work, so the file takes a few seconds.
"""

from pathlib import Path

import pytest
import torch

import fineweb
import hellaswag
import train_gpt2 as tg
from helpers import REPO, TINY, assert_one_error_line, write_shards
from results import write_training_params as wtp

HUGE = "100000000000"  # 1e11
UNMAKEABLE = "/proc/reproduce_gpt2_cannot_be_made"  # even root cannot make a folder there

# (script, argv, expected exit code, a phrase of the error line). {file}: a regular file;
# {data}: a folder of tiny shards; {log}: a finished run's log dir (the write-up's input).
CASES = [
    # train_gpt2.py: paths (checked before the model is built)
    ("train", ["--log_dir", "{file}/log"], 1, "is a file, not a folder"),
    ("train", ["--log_dir", UNMAKEABLE + "/log"], 1, "cannot be made"),
    ("train", ["--log_dir", ""], 1, "--log_dir"),
    ("train", ["--data_dir", ""], 1, "does not exist"),
    ("train", ["--resume", ""], 1, "--resume"),
    ("train", ["--device", ""], 1, "--device"),
    ("train", ["--export", ""], 1, "checkpoint not found"),  # was: no --export, so it trained
    ("train", ["--export", "{file}", "--export_dir", "{file}/hf"], 1, "is a file, not a folder"),
    ("train", ["--export", "{file}", "--export_dir", UNMAKEABLE], 1, "cannot be made"),
    ("train", ["--export", "{file}", "--export_dir", ""], 1, "--export_dir"),
    # train_gpt2.py: sizes that cannot fit in this machine's memory (was: the allocator's
    # traceback, or minutes of building a model of 1e8 layers)
    ("train", ["--n_embd", "1048576", "--n_head", "1"], 1, "GiB by estimate"),
    ("train", ["--block_size", HUGE], 1, "GiB by estimate"),
    ("train", ["--vocab_size", HUGE], 1, "GiB by estimate"),
    ("train", ["--n_layer", "100000000"], 1, "GiB by estimate"),
    # train_gpt2.py: bounds checked at parse time
    ("train", ["--hellaswag_batch", "1000000000"], 1, "--hellaswag_batch"),  # was 1.86 TiB
    ("train", ["--sample_every", "1", "--sample_prompt", ""], 1, "--sample_prompt"),
    ("train", ["--seed", str(2**64)], 1, "--seed"),
    ("train", ["--num_samples", "1000000000"], 1, "--num_samples"),
    ("train", ["--max_lr", "1e39"], 1, "--max_lr"),  # was: fp32 overflow in AdamW's step
    ("train", ["--optimizer", "muon", "--muon_lr", "1e300"], 1, "--muon_lr"),
    # hellaswag.py (bounds before the model loads)
    ("hellaswag", ["--model", "{file}", "--batch_size", "1000000000"], 1, "--batch_size"),
    ("hellaswag", ["--model", "{file}", "--batch_size", "0"], 1, "--batch_size"),
    # fineweb.py: argparse's usage errors
    ("fineweb", ["--source", "{file}", "--shard_size", "1e30"], 2, "--shard_size"),
    ("fineweb", ["--source", "{file}", "--workers", "100000"], 2, "--workers"),  # was: a hang
    ("fineweb", ["--source", "", "--local_dir", "{tmp}/out"], 2, "empty path"),  # was: the repo
    ("fineweb", ["--source", "{file}", "--local_dir", ""], 2, "empty path"),  # was: a default dir
    # the write-up tool
    ("write", ["{log}", "--out", ""], 1, "empty path"),  # was: results/<name> in the repo
    ("write", ["{log}", "--out", "{file}"], 1, "is a file"),
    ("write", [""], 1, "empty path"),
]
MAINS = {"train": tg.main, "hellaswag": hellaswag.main, "fineweb": fineweb.main, "write": wtp.main}


def run_main(script, argv, capsys):
    """script's main(argv) in this process -> (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = MAINS[script](argv)
    except SystemExit as e:  # argparse, and hellaswag.py's errors
        code = e.code
    return code or 0, capsys.readouterr().err


def files_under(*folders):
    return {str(p) for folder in folders for p in Path(folder).rglob("*")}


def assert_error(code, err, expected_code, phrase):
    if expected_code == 1:
        return assert_one_error_line(err, code, phrase)
    # argparse: its usage, then one "<prog>: error: ..." line
    errors = [line for line in err.splitlines() if "error: " in line]
    assert code == expected_code and "Traceback" not in err, err[-3000:]
    assert len(errors) == 1 and phrase in errors[0], err[-3000:]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "notes.txt").write_text("not a folder\n")
    (root / "run").mkdir()
    (root / "run" / "log.txt").write_text("0 train 10.9\n1 train 10.1\n")
    return {"tmp": root, "file": root / "notes.txt", "data": write_shards(root / "data"),
            "log": root / "run"}


@pytest.mark.parametrize("script,argv,expected_code,phrase", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1]) or repr('')}" for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(inputs, capsys, script, argv, expected_code,
                                                   phrase):
    argv = [a.format(**inputs) for a in argv]
    if script == "train":  # a tiny run that would start at once if nothing stopped it
        argv = [*TINY, "--data_dir", str(inputs["data"]), "--log_dir", str(inputs["tmp"] / "log"),
                *argv]
    before = files_under(inputs["tmp"]), files_under(REPO / "results"), set(REPO.iterdir())
    code, err = run_main(script, argv, capsys)
    assert_error(code, err, expected_code, phrase)
    after = files_under(inputs["tmp"]), files_under(REPO / "results"), set(REPO.iterdir())
    assert after == before, "a refused command wrote files"


def raising(error):
    def fn(*args, **kwargs):
        raise error
    return fn


def cpu_allocator_error():
    return RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
                        "allocate memory: you tried to allocate 105396568064 bytes.")


@pytest.mark.parametrize("error", [cpu_allocator_error, lambda: MemoryError("Unable to allocate")],
                         ids=["cpu_allocator", "numpy"])
def test_out_of_memory_on_cpu_is_cuda_s_one_line(inputs, capsys, monkeypatch, tmp_path, error):
    """The CPU allocator's RuntimeError and numpy's MemoryError get the advice a CUDA
    OutOfMemoryError gets; any other RuntimeError is still a traceback (a bug, not bad input)."""
    monkeypatch.setattr(tg.GPT, "forward", raising(error()))
    argv = [*TINY, "--data_dir", str(inputs["data"]), "--val_every", "0"]
    code, err = run_main("train", [*argv, "--log_dir", str(tmp_path / "oom")], capsys)
    assert_one_error_line(err, code, "out of memory at --micro_batch 2", "cpu")
    assert not list((tmp_path / "oom").glob("model_*.pt"))
    monkeypatch.setattr(tg.GPT, "forward", raising(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        tg.main([*argv, "--log_dir", str(tmp_path / "bug")])


def test_out_of_memory_in_the_other_scripts_is_one_line(inputs, capsys, monkeypatch):
    monkeypatch.setattr(hellaswag, "load_model", lambda name, device: torch.nn.Identity())
    monkeypatch.setattr(hellaswag, "load_examples", lambda *a: [])
    monkeypatch.setattr(hellaswag, "evaluate", raising(cpu_allocator_error()))
    code, err = run_main("hellaswag", ["--model", "x", "--batch_size", "64"], capsys)
    assert_one_error_line(err, code, "out of memory at --batch_size 64", "smaller --batch_size")

    monkeypatch.setattr(fineweb, "run", raising(MemoryError()))
    code, err = run_main("fineweb", ["--source", str(inputs["file"])], capsys)
    assert_one_error_line(err, code, "out of memory", "--shard_size", "finished shards are kept")
