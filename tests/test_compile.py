"""
The compiled trainer on CPU, in-process, with a counting torch.compile backend (aot_eager: the
same graphs inductor would get, without its minutes of code generation on 2 cores):
  * the training graph has static shapes whatever ran before it (validation, HellaSwag with its
    varying lengths), and after the first train / val / HellaSwag / samples cycle nothing is
    compiled again (test_static_training_graph_and_no_recompiles);
  * the compiled loss path (F.cross_entropy, fused by the compiler) trains exactly like the eager
    chunked one: the first 20 losses on real text agree within 1e-4 in fp32
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
    """A torch.compile backend that records every graph: (kind, grad mode, symbolic shapes?)."""

    def __init__(self):
        self.graphs, self.training = [], False

    def compiler(self, kind):
        def compile_fn(gm, example_inputs):
            symbolic = any(isinstance(x, torch.SymInt) or (isinstance(x, torch.Tensor) and any(
                isinstance(s, torch.SymInt) for s in x.shape)) for x in example_inputs)
            self.graphs.append((kind, self.training, symbolic))
            return make_boxed_func(gm.forward)
        return compile_fn

    def backend(self):
        return aot_autograd(fw_compiler=self.compiler("forward"), bw_compiler=self.compiler("backward"))


def make_trainer(monkeypatch, backend, *argv):
    torch._dynamo.reset()
    real_compile = torch.compile
    monkeypatch.setattr(tg.torch, "compile", lambda model, **kw: real_compile(model, backend=backend.backend()))
    args = tg.get_args([str(a) for a in argv])
    tg.resolve_defaults(args, 1)
    return tg.Trainer(args, tg.Dist())


def test_static_training_graph_and_no_recompiles(tmp_path, monkeypatch):
    data = write_shards(tmp_path / "data")
    monkeypatch.setenv("HELLASWAG_DIR", str(write_hellaswag_dir(tmp_path / "hs", n=12)))
    backend = CountingBackend()
    t = make_trainer(monkeypatch, backend, *TINY, "--data_dir", data, "--log_dir", tmp_path / "log", "--compile", "1",
                     "--hellaswag_every", "1", "--hellaswag_batch", "2", "--sample_every", "1", "--sample_tokens", "4")
    enc = tg.get_encoding()

    def cycle(step, hellaswag_first):
        backend.training = False
        if hellaswag_first:  # the worst order: varying HellaSwag lengths before anything else
            t.run_hellaswag(None)
        tg.evaluate_val(t.eval_runner, t.val_set, t.dist, t.args.micro_batch, t.device, t.amp)
        t.run_hellaswag(None)
        tg.generate_samples(t.model, enc, "Hello", 1, 4, 0, t.device, t.amp)
        backend.training = True
        t.train_step(step)

    cycle(0, hellaswag_first=True)
    first = list(backend.graphs)
    training = [g for g in first if g[1]]
    assert [kind for kind, _, _ in training] == ["forward", "backward"], first
    assert not any(symbolic for _, _, symbolic in training), f"the training graph has symbolic shapes: {first}"
    assert len(first) <= 5, f"too many graphs for one cycle: {first}"  # val, HellaSwag (1-2), train fwd + bwd
    for step in (1, 2):
        cycle(step, hellaswag_first=False)
    assert backend.graphs == first, f"compiled again after the first cycle: {backend.graphs[len(first):]}"


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
    data = real_text_shards(tmp_path)
    argv = [*TINY, "--data_dir", data, "--log_dir", tmp_path / "log", "--max_steps", "20", "--micro_batch", "8",
            "--warmup_steps", "5", "--max_lr", "3e-3"]
    losses = {}
    for compiled in (0, 1):
        t = make_trainer(monkeypatch, CountingBackend(), *argv, "--compile", compiled)
        losses[compiled] = [t.train_step(step)[0] for step in range(20)]
    assert losses[0][-1] < losses[0][0] - 1.0, "the tiny model did not learn: the comparison would be empty"
    for step, (eager, compiled) in enumerate(zip(losses[0], losses[1])):
        assert abs(eager - compiled) < 1e-4, f"step {step}: eager {eager}, compiled {compiled}"
