"""
The compiled trainer on CPU: main() in-process, with a counting torch.compile backend (aot_eager:
the same graphs inductor would get, without its minutes of code generation on 2 cores):
  * the training graph has static shapes whatever ran before it (validation, HellaSwag with its
    varying lengths), and after the first train / val / HellaSwag / samples cycle nothing is
    compiled again (test_static_training_graph_and_no_recompiles);
  * compiling does not change the math: the first 20 losses on real text agree with the eager
    run's within 1e-4 in fp32
    (test_compiled_loss_path_trains_like_the_eager_one).
"""

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func

import train_gpt2 as tg
from helpers import TINY, write_hellaswag_dir, write_shards

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared/data/corpus/openstax_textbooks_ccby.jsonl.gz"


class CountingBackend:
    """A torch.compile backend that records every graph it gets: (kind, symbolic shapes?, the
    training steps logged so far)."""

    def __init__(self, log_file):
        self.graphs, self.log_file = [], log_file

    def compiler(self, kind):
        def compile_fn(gm, example_inputs):
            symbolic = any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and any(
                isinstance(s, torch.SymInt) for s in x.shape)) for x in example_inputs)
            log = self.log_file.read_text() if self.log_file.exists() else ""
            trained = sum(line.split()[1] == "train" for line in log.splitlines())
            self.graphs.append((kind, symbolic, trained))
            return make_boxed_func(gm.forward)
        return compile_fn

    def backend(self):
        return aot_autograd(fw_compiler=self.compiler("forward"),
                            bw_compiler=self.compiler("backward"))


def run_compiled(monkeypatch, backend, *argv):
    """main(argv) in this process, torch.compile going to the counting backend."""
    torch._dynamo.reset()
    real_compile = torch.compile
    monkeypatch.setattr(tg.torch, "compile",
                        lambda model, **kw: real_compile(model, backend=backend.backend()))
    assert tg.main([str(a) for a in argv]) == 0


def test_static_training_graph_and_no_recompiles(tmp_path, monkeypatch):
    """The real loop (val, HellaSwag with its varying lengths, samples, then the training step,
    three times): the training graph is static, and after the first step nothing compiles."""
    data = write_shards(tmp_path / "data")
    monkeypatch.setenv("HELLASWAG_DIR", str(write_hellaswag_dir(tmp_path / "hs", n=12)))
    backend = CountingBackend(tmp_path / "log" / "log.txt")
    run_compiled(monkeypatch, backend, *TINY, "--data_dir", data, "--log_dir", tmp_path / "log",
                 "--compile", "1", "--max_steps", "3", "--val_every", "1", "--hellaswag_every", "1",
                 "--hellaswag_batch", "2", "--sample_every", "1", "--sample_tokens", "4")
    graphs = backend.graphs
    assert [g[2] for g in graphs] == [0] * len(graphs), \
        f"compiled again after the first step: {graphs}"
    backward = [i for i, g in enumerate(graphs) if g[0] == "backward"]
    assert len(backward) == 1, graphs
    training = graphs[backward[0] - 1:backward[0] + 1]  # the training forward, then its backward
    assert training[0][0] == "forward", graphs
    assert not any(g[1] for g in training), f"the training graph has symbolic shapes: {graphs}"
    # val, HellaSwag (1-2), train fwd + bwd
    assert len(graphs) <= 5, f"too many graphs for one cycle: {graphs}"


def real_text_shards(tmp_path):
    """~60k tokens of real English (the shared OpenStax corpus, else this repo's own docs)."""
    if CORPUS.exists():
        texts = []
        with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
            for line in f:
                texts.append(json.loads(line)["text"])
                if sum(map(len, texts)) > 300_000:
                    break
    else:
        texts = [p.read_text() for p in sorted(REPO.glob("*.md")) + sorted(REPO.glob("*.py"))]
    enc = tg.get_encoding()
    tokens = np.concatenate([[tg.EOT] + enc.encode_ordinary(t) for t in texts]).astype(np.uint16)
    out = tmp_path / "real"
    out.mkdir()
    np.save(out / "real_val_000000.npy", tokens[:10_000])
    np.save(out / "real_train_000001.npy", tokens[10_000:])
    return out


def test_compiled_loss_path_trains_like_the_eager_one(tmp_path, monkeypatch):
    """The first 20 losses on real text, compiled vs eager, agree within 1e-4 in fp32."""
    data = real_text_shards(tmp_path)
    losses = {}
    for compiled in (0, 1):
        log_dir = tmp_path / f"log{compiled}"
        run_compiled(monkeypatch, CountingBackend(log_dir / "log.txt"), *TINY, "--data_dir", data,
                     "--log_dir", log_dir, "--max_steps", "20", "--micro_batch", "8",
                     "--warmup_steps", "5", "--max_lr", "3e-3", "--val_every", "0",
                     "--compile", compiled)
        losses[compiled] = [float(line.split()[2])
                            for line in (log_dir / "log.txt").read_text().splitlines()
                            if line.split()[1] == "train"]
    assert len(losses[0]) == 20 and losses[0][-1] < losses[0][0] - 1.0, \
        "the tiny model did not learn"
    for step, (eager, compiled) in enumerate(zip(losses[0], losses[1])):
        assert abs(eager - compiled) < 1e-4, f"step {step}: eager {eager}, compiled {compiled}"
