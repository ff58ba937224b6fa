"""The README's CPU quick start runs as written (the download swapped for a local text file) and
ends with a plot and a generated write-up."""

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# what the quick start needs from the repo (it runs in a scratch copy, so results/ stays clean)
FILES = ["train_gpt2.py", "fineweb.py", "hellaswag.py", "show_results.ipynb", "results/__init__.py",
         "results/write_training_params.py", "requirements.txt", "requirements-dev.txt"]


def quickstart_commands():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## CPU quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return block.replace("\\\n", " ").strip().splitlines()


def write_local_text(path):
    """About 1 MB of real English: the OpenStax corpus when shared/data is here, else the repo's
    docs."""
    corpus = SHARED_DATA / "corpus" / "openstax_textbooks_ccby.jsonl.gz"
    if corpus.exists():
        texts, size = [], 0
        with gzip.open(corpus, "rt", encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                size += len(texts[-1])
                if size > 1_000_000:
                    break
        path.write_text("\n\n".join(texts))
    else:
        path.write_text("\n\n".join(
            p.read_text() for p in sorted(REPO.glob("*.md")) + sorted(REPO.glob("*.py"))))


def test_readme_quickstart_runs_end_to_end(tmp_path):
    commands = quickstart_commands()
    assert commands[0].startswith("pip install") and commands[1].startswith("curl")
    assert any(c.startswith("python fineweb.py --source input.txt") for c in commands)
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    write_local_text(tmp_path / "input.txt")  # instead of the curl download (no network here)

    env = dict(os.environ)
    if not env.get("HELLASWAG_DIR"):
        if not (SHARED_DATA / "hellaswag" / "hellaswag_val.jsonl").exists():
            pytest.skip("HellaSwag val file not available offline (set HELLASWAG_DIR)")
        env["HELLASWAG_DIR"] = str(SHARED_DATA / "hellaswag")
    for command in commands[2:]:  # the install and the download are done above
        out = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, f"{command}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"

    log = (tmp_path / "quickstart_log" / "log.txt").read_text().splitlines()
    names = {line.split()[1] for line in log}
    assert {"train", "val", "hella"} <= names
    val = [float(line.split()[2]) for line in log if line.split()[1] == "val"]
    assert val[-1] < val[0] - 1.0  # it learned something from the text
    assert (tmp_path / "quickstart_log" / "samples.txt").read_text().count("sample0") == 2
    max_steps = int(re.search(r"--max_steps (\d+)", " ".join(commands)).group(1))
    assert (tmp_path / "quickstart_log" / f"model_{max_steps:05d}.pt").exists()
    png = tmp_path / "results" / "quickstart" / "loss.png"
    assert png.exists() and png.stat().st_size > 10_000
    writeup = (tmp_path / "results" / "quickstart" / "training_params.md").read_text()
    assert "do not edit by hand" in writeup
