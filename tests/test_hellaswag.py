"""
Tests for hellaswag.py. CPU only, offline.

Uses 48 chosen rows of the real validation file from $HELLASWAG_DIR when that is set (CI points it
at shared/data/hellaswag), the hand-written fixture tests/fixtures/hellaswag_tiny.jsonl otherwise.
    TIKTOKEN_CACHE_DIR=.../tiktoken_cache HELLASWAG_DIR=.../hellaswag \
        python -m pytest tests/test_hellaswag.py -q
"""

import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import pytest
import tiktoken
import torch
import torch.nn as nn
import torch.nn.functional as F

import hellaswag
import train_gpt2  # only for a tiny GPT and its export; hellaswag does not import it
from helpers import REPO, assert_one_error_line

FIXTURE = REPO / "tests/fixtures/hellaswag_tiny.jsonl"
HELLASWAG_DIR = os.environ.get("HELLASWAG_DIR")
REAL_VAL = Path(HELLASWAG_DIR) / "hellaswag_val.jsonl" if HELLASWAG_DIR else None
HAVE_REAL = REAL_VAL is not None and REAL_VAL.is_file()
needs_real = pytest.mark.skipif(
    not HAVE_REAL, reason="HELLASWAG_DIR not set (real val file not available)"
)

# 48 real val examples instead of hundreds: the reference loop is the slow part of this file.
# 0..35 are short ActivityNet rows (24 of them fit in 48 tokens); the rest were picked from token
# counts of the whole file: 37 has the shortest row (14 tokens), 1012 the shortest longest-row (17),
# 7644 / 8481 / 4019 / 6213 the longest rows (166, 151, 149, 146), 9225 the longest ending (96),
# 42 / 117 endings over 48 tokens, 105 a longest row of exactly 48 tokens, 61 / 188 of 49.
REAL_PICK = list(range(36)) + [37, 42, 61, 105, 117, 188, 1012, 4019, 6213, 7644, 8481, 9225]
# a max_len that cuts some examples but not all (real rows: 14..166 tokens; fixture rows: 17..49)
SMALL_MAX_LEN = 48 if HAVE_REAL else 30


# -----------------------------------------------------------------------------
# stand-in models


class TinyCausalLM(nn.Module):
    """A small GPT-like causal LM with the repo's model interface: forward(idx, targets=None)
    -> (logits, loss). Default PyTorch init gives logits with a spread of ~0.5, so the 4 endings
    get clearly different losses (no near-ties that float noise could flip). No config: the
    evaluators apply no max_len unless given one."""

    def __init__(self, vocab_size=50304, block_size=256, n_layer=2, n_head=2, n_embd=32):
        super().__init__()
        self.n_head = n_head
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList()
        for _ in range(n_layer):
            self.blocks.append(
                nn.ModuleDict(
                    dict(
                        ln1=nn.LayerNorm(n_embd),
                        qkv=nn.Linear(n_embd, 3 * n_embd),
                        proj=nn.Linear(n_embd, n_embd),
                        ln2=nn.LayerNorm(n_embd),
                        fc=nn.Linear(n_embd, 4 * n_embd),
                        out=nn.Linear(4 * n_embd, n_embd),
                    )
                )
            )
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        C = x.size(-1)
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(C, dim=2)
            q, k, v = (
                t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            x = x + blk["proj"](y.transpose(1, 2).reshape(B, T, C))
            x = x + blk["out"](F.gelu(blk["fc"](blk["ln2"](x))))
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
            )
        return logits, loss


def make_tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyCausalLM(**kw).eval()


def make_tiny_gpt(block_size=32, seed=0):
    """The repo's GPT, tiny, with a block size shorter than many HellaSwag rows."""
    torch.manual_seed(seed)
    cfg = train_gpt2.GPTConfig(
        block_size=block_size, vocab_size=50304, n_layer=1, n_head=2, n_embd=32
    )
    return train_gpt2.GPT(cfg).eval(), cfg


class UniformLM(nn.Module):
    """All logits 0: every token costs ln(V), so the SUM picks the ending with the fewest tokens."""

    def __init__(self, vocab_size=50257, output="tuple"):
        super().__init__()
        self.vocab_size, self.output = vocab_size, output

    def forward(self, idx, targets=None):
        # a view: no (B, T, V) buffer
        logits = torch.zeros(1, 1, self.vocab_size).expand(*idx.shape, -1)
        if self.output == "tensor":
            return logits
        return types.SimpleNamespace(logits=logits) if self.output == "object" else (logits, None)


class Recorder(nn.Module):
    """inner, recording the shape of every forward's input."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.shapes = inner, []

    def forward(self, idx):
        self.shapes.append(tuple(idx.shape))
        return self.inner(idx)


class BigramOracle(nn.Module):
    """Knows which tokens follow each token in the correct rows (context + labelled ending):
    their logits are +20, all others 0. Only helps if the evaluator scores token t with the
    logits at t-1 and only over the ending, so it checks the shift and the mask."""

    def __init__(self, examples, vocab_size=50257):
        super().__init__()
        self.vocab_size = vocab_size
        self.next_token = {}
        enc = tiktoken.get_encoding("gpt2")
        for ex in examples:
            row = enc.encode(ex["ctx"]) + enc.encode(" " + ex["endings"][ex["label"]])
            for a, b in zip(row[:-1], row[1:]):
                self.next_token.setdefault(a, set()).add(b)

    def forward(self, idx, targets=None):
        logits = torch.zeros(*idx.shape, self.vocab_size)  # (B, T, V)
        for a, successors in self.next_token.items():
            for b in successors:
                logits[..., b] += 20.0 * (idx == a)
        return logits, None


def fixture_examples():
    return [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]


def row_lengths(exs):
    lengths = []
    for ex in exs:
        ctx, ends = hellaswag.tokenize_example(ex)
        lengths += [len(ctx) + len(e) for e in ends]
    return lengths


@pytest.fixture(scope="module")
def examples():
    """The 48 REAL_PICK val examples when HELLASWAG_DIR is set, else the 12 hand-written ones."""
    if HAVE_REAL:
        every = hellaswag.load_examples("val", HELLASWAG_DIR)
        return [every[i] for i in REAL_PICK]
    return fixture_examples()


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="module")
def reference(examples, tiny_model):
    """The one-example loop's fp32 predictions, computed once and shared by the batched checks."""
    return hellaswag.evaluate_reference(tiny_model, examples, "cpu", return_predictions=True)


@pytest.fixture(scope="module")
def second_half(examples):
    """The real sample's 12 short rows 24..35 and the 12 picked long ones (fixture: its last 6)."""
    return examples[len(examples) // 2:]


@pytest.fixture(scope="module")
def reference_cut(second_half, tiny_model):
    """The reference at SMALL_MAX_LEN, on second_half: many rows cut from the left."""
    return hellaswag.evaluate_reference(tiny_model, second_half, "cpu", max_len=SMALL_MAX_LEN,
                                        return_predictions=True)


# -----------------------------------------------------------------------------
# rendering


def test_render_hand_checked():
    enc = tiktoken.get_encoding("gpt2")
    ex = {"ctx": "A man is sitting on a roof. he", "label": 3,
          "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                      "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}
    ctx = enc.encode("A man is sitting on a roof. he")
    ends = [
        enc.encode(" is using wrap to wrap a pair of skis."),
        enc.encode(" is ripping level tiles off."),
        enc.encode(" is holding a rubik's cube."),
        enc.encode(" starts pulling up roofing on a roof."),
    ]
    # the space goes with the ending: " is" is a single GPT-2 token, different from "is"
    assert ends[0][0] == enc.encode(" is")[0] and enc.encode(" is") != enc.encode("is")
    assert (
        enc.decode(ctx + ends[3])
        == "A man is sitting on a roof. he starts pulling up roofing on a roof."
    )
    assert hellaswag.tokenize_example(ex) == (ctx, ends)
    # a literal <|endoftext|> in the data is plain text, not the special token (nor an error)
    odd = dict(ex, ctx="he said <|endoftext|>")
    assert 50256 not in hellaswag.tokenize_example(odd)[0]

    # max_len 10: every row keeps its last 10 tokens, the context is cut from the left (and the
    # 11-token ending 0 loses its first token: n_ctx 0)
    assert [len(e) for e in ends] == [11, 6, 8, 9]
    for end in ends:
        row, n_ctx = hellaswag.fit_row(ctx, end, max_len=10)
        assert row == (ctx + end)[-10:] and n_ctx == max(10 - len(end), 0)


def test_fit_row_keeps_the_last_max_len_tokens():
    ctx, end = [1, 2, 3, 4, 5], [6, 7, 8]
    assert hellaswag.fit_row(ctx, end) == ([1, 2, 3, 4, 5, 6, 7, 8], 5)
    # fits: untouched
    assert hellaswag.fit_row(ctx, end, max_len=8) == ([1, 2, 3, 4, 5, 6, 7, 8], 5)
    # context cut from the left
    assert hellaswag.fit_row(ctx, end, max_len=6) == ([3, 4, 5, 6, 7, 8], 3)
    # an ending longer than max_len loses its own first tokens; its first kept token is at
    # position 0 and is not scored (nothing before it)
    assert hellaswag.fit_row(ctx, end, max_len=2) == ([7, 8], 0)


def test_count_truncated(examples):
    lengths = row_lengths(examples)
    longest = [max(lengths[4 * i:4 * i + 4]) for i in range(len(examples))]
    assert hellaswag.count_truncated(examples, None) == 0
    assert hellaswag.count_truncated(examples, max(longest)) == 0
    assert hellaswag.count_truncated(examples, max(longest) - 1) == longest.count(max(longest))
    for max_len in (SMALL_MAX_LEN, 16, 100):
        assert hellaswag.count_truncated(examples, max_len) == sum(
            n > max_len for n in longest
        ), max_len


def test_uniform_model_sum_picks_fewest_tokens():
    enc = tiktoken.get_encoding("gpt2")
    ex = {
        "ctx": "The cat sat on the mat.",
        "label": 0,
        "endings": [
            "It purred loudly and then went to sleep in the warm sun by the window.",
            "It slept.",
            "It looked at the dog across the room.",
            "It yawned and stretched.",
        ],
    }
    lengths = [len(enc.encode(" " + e)) for e in ex["endings"]]
    assert len(set(lengths)) == 4
    shortest = lengths.index(min(lengths))
    # the three outputs a model may return: (logits, loss), the bare logits, an object with .logits
    for model in (UniformLM(), UniformLM(output="tensor"), UniformLM(output="object")):
        for fn in (hellaswag.evaluate, hellaswag.evaluate_reference):
            res = fn(model, [ex], "cpu", return_predictions=True)
            assert res["predictions"][0][:2] == (0, shortest)
            assert res["num_correct"] == int(shortest == 0)


def test_oracle_model_scores_shifted_ending_tokens():
    exs = fixture_examples()
    model = BigramOracle(exs)
    for fn in (hellaswag.evaluate, hellaswag.evaluate_reference):
        res = fn(model, exs, "cpu", **({"batch_size": 3} if fn is hellaswag.evaluate else {}))
        assert res["examples"] == len(exs)
        assert res["acc"] == 1.0 and res["acc_norm"] == 1.0


# -----------------------------------------------------------------------------
# batched evaluator == one-example reference


def _same_result(got, ref):
    assert got["predictions"] == ref["predictions"]  # every example, both pred and pred_norm
    for key in ("examples", "num_correct", "num_correct_norm", "acc", "acc_norm"):
        assert got[key] == ref[key], key


def test_batched_matches_reference(examples, tiny_model, reference):
    # batch_size 5 (20 rows) does not divide the row count: the last batch gets dummy rows
    got = hellaswag.evaluate(tiny_model, examples, "cpu", batch_size=5, return_predictions=True)
    _same_result(got, reference)
    assert got["examples"] == len(examples)
    # a random model really distinguishes the endings (the check is not vacuous)
    assert len({p for _, p, _ in got["predictions"]}) == 4


def test_batched_is_independent_of_batch_size_and_chunking(examples, tiny_model, reference):
    def check(sub, batch_size, multiple, loss_chunk):
        model = Recorder(tiny_model)
        got = hellaswag.evaluate(
            model,
            examples[sub],
            "cpu",
            batch_size=batch_size,
            bucket_multiple=multiple,
            loss_chunk=loss_chunk,
            return_predictions=True,
        )
        want = reference["predictions"][sub]
        assert [p[1:] for p in got["predictions"]] == [p[1:] for p in want]
        # full batches of 4 * batch_size rows, longest first, lengths rounded up to the multiple:
        # few shapes for torch.compile
        lengths, Ts = row_lengths(examples[sub]), [T for _, T in model.shapes]
        assert model.shapes == [(4 * batch_size, T) for T in Ts] and len(Ts) == -(
            -len(lengths) // (4 * batch_size)
        )
        assert Ts == sorted(Ts, reverse=True) and Ts[0] == -(-max(lengths) // multiple) * multiple
        assert all(T % multiple == 0 for T in Ts)
    # the GPU's bucketing and one fp32 cross-entropy chunk per batch, on the short rows: the
    # (rows, T, vocab) logits of a tiny model on long rows would be ~1 GB per batch on CPU
    check(slice(0, 16), batch_size=4, multiple=32, loss_chunk=4096)
    check(slice(1, None, 3), batch_size=1, multiple=16, loss_chunk=7)  # long rows too


def test_truncated_rows_batched_matches_reference(
    second_half, tiny_model, reference, reference_cut
):
    exs = second_half
    n_cut = hellaswag.count_truncated(exs, SMALL_MAX_LEN)
    assert 0 < n_cut < len(exs)  # some examples are cut, some are not
    if HAVE_REAL:  # and some endings alone are longer than max_len (position 0 then unscored)
        assert any(len(e) > SMALL_MAX_LEN for ex in exs for e in hellaswag.tokenize_example(ex)[1])
    # batch_size 5 does not divide 24 (or 6): the last batch gets dummy rows
    model = Recorder(tiny_model)
    got = hellaswag.evaluate(
        model,
        exs,
        "cpu",
        batch_size=5,
        max_len=SMALL_MAX_LEN,
        bucket_multiple=32,
        return_predictions=True,
    )
    _same_result(got, reference_cut)
    assert model.shapes[0] == (20, SMALL_MAX_LEN)  # the rounded-up length is capped at max_len
    assert got["examples"] == reference_cut["examples"] == len(exs)  # every example still scored
    uncut = [p[1:] for p in reference["predictions"][-len(exs):]]
    # the cut really changed the input
    assert [p[1:] for p in reference_cut["predictions"]] != uncut


def test_model_block_size_is_the_default_max_len(examples):
    model, _ = make_tiny_gpt(block_size=32)
    exs = examples[:8] if not HAVE_REAL else [examples[i] for i in (0, 1, 2, 36, 37, 44, 45, 47)]
    assert hellaswag.count_truncated(exs, 32) > 0  # the old evaluator raised here
    default = hellaswag.evaluate(model, exs, "cpu", batch_size=3, return_predictions=True)
    explicit = hellaswag.evaluate(
        model, exs, "cpu", batch_size=3, max_len=32, return_predictions=True
    )
    ref = hellaswag.evaluate_reference(model, exs, "cpu", return_predictions=True)
    assert default["predictions"] == explicit["predictions"] == ref["predictions"]
    # the block size is found through torch.compile (_orig_mod) and DDP (module) wrappers, and
    # transformers' names for it are read too
    assert (
        hellaswag.model_max_len(
            types.SimpleNamespace(module=types.SimpleNamespace(_orig_mod=model))
        )
        == 32
    )
    assert hellaswag.model_max_len(types.SimpleNamespace()) is None  # no config: no limit
    hf_config = types.SimpleNamespace(n_positions=None, max_position_embeddings=64)
    assert hellaswag.model_max_len(types.SimpleNamespace(config=hf_config)) == 64


def test_training_mode_restored(tiny_model):
    exs = fixture_examples()[:2]
    for fn in (hellaswag.evaluate, hellaswag.evaluate_reference):
        tiny_model.train()
        fn(tiny_model, exs, "cpu")
        assert tiny_model.training
        tiny_model.eval()
        fn(tiny_model, exs, "cpu")
        assert not tiny_model.training


def test_autocast_is_entered_around_each_forward(tiny_model):
    """Both evaluators run every forward inside the given context (here bf16 autocast on CPU)."""
    exs = fixture_examples()[:3]
    amp = torch.autocast("cpu", dtype=torch.bfloat16)
    seen = []
    handle = tiny_model.lm_head.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        ref = hellaswag.evaluate_reference(tiny_model, exs, "cpu", autocast=amp)
        got = hellaswag.evaluate(tiny_model, exs, "cpu", autocast=amp, batch_size=1)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16] * 6
    assert got["examples"] == ref["examples"] == 3


def test_empty_example_list(tiny_model):
    res = hellaswag.evaluate(tiny_model, [], "cpu")
    assert res["examples"] == 0 and res["acc_norm"] == 0.0


def test_compiled_model_same_predictions_few_compiles(tiny_model):
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    exs = fixture_examples()
    recorder = Recorder(tiny_model)
    eager = hellaswag.evaluate(
        recorder, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True
    )
    # a torch.compile backend that runs the graph eagerly and counts compiles
    counter = CompileCounter()
    compiled = torch.compile(tiny_model, backend=counter)
    res = hellaswag.evaluate(
        compiled, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True
    )
    n_shapes = len(set(recorder.shapes))
    assert n_shapes >= 3  # the test really exercises several buckets
    assert res["predictions"] == eager["predictions"]
    # 6 batches, but only a few graphs: one per bucket length at most (dynamo may go dynamic sooner)
    assert 1 <= counter.frame_count <= n_shapes
    again = hellaswag.evaluate(compiled, exs, "cpu", batch_size=2, bucket_multiple=16)
    assert again["acc_norm"] == res["acc_norm"]
    assert counter.frame_count <= n_shapes  # a second pass compiles nothing new
    torch._dynamo.reset()


@pytest.mark.skipif(
    os.environ.get("HELLASWAG_TEST_INDUCTOR") != "1",
    reason="inductor compile takes ~1 min on 2 CPU cores; set HELLASWAG_TEST_INDUCTOR=1",
)
def test_inductor_compiled_model_same_predictions(tiny_model):
    torch._dynamo.reset()
    exs = fixture_examples()
    eager = hellaswag.evaluate(
        tiny_model, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True
    )
    res = hellaswag.evaluate(
        torch.compile(tiny_model),
        exs,
        "cpu",
        batch_size=2,
        bucket_multiple=16,
        return_predictions=True,
    )
    assert res["predictions"] == eager["predictions"]
    torch._dynamo.reset()


# -----------------------------------------------------------------------------
# interruptible eval


class StopOnCall:
    """should_stop that counts its calls and returns True from call number `stop_at` on."""

    def __init__(self, stop_at=None):
        self.stop_at, self.calls = stop_at, 0

    def __call__(self):
        self.calls += 1
        return self.stop_at is not None and self.calls >= self.stop_at


def test_should_stop_returns_none_and_restores_mode(tiny_model, monkeypatch):
    assert hellaswag.STOP_CHECK_EVERY == 8
    K = 2  # read at call time; the real value would only need more examples here
    monkeypatch.setattr(hellaswag, "STOP_CHECK_EVERY", K)
    exs = fixture_examples()[:2 * K + 1]  # batch_size 1: 2K+1 batches, checks at 0, K, 2K
    tiny_model.train()
    stop = StopOnCall(stop_at=2)
    assert hellaswag.evaluate(tiny_model, exs, "cpu", batch_size=1, should_stop=stop) is None
    assert stop.calls == 2 and tiny_model.training
    tiny_model.eval()
    never = StopOnCall()
    res = hellaswag.evaluate(tiny_model, exs[:K + 1], "cpu", batch_size=1, should_stop=never)
    assert never.calls == 2 and res["examples"] == K + 1 and not tiny_model.training


# -----------------------------------------------------------------------------
# DDP split


def _ddp_worker(rank, world_size, init_file, exs, out_dir):
    from datetime import timedelta

    import torch.distributed as dist
    torch.set_num_threads(1)
    # a short timeout: a rank that calls should_stop fewer times fails the test instead of
    # hanging it
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=60),
    )
    try:
        calls = []

        def should_stop():  # what the trainer passes: a collective all-reduce of the stop flag
            calls.append(1)
            flag = torch.zeros(1)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return bool(flag.item())

        model = Recorder(make_tiny_model())
        res = hellaswag.evaluate(model, exs, "cpu", batch_size=1, rank=rank, world_size=world_size,
                                 should_stop=should_stop, return_predictions=True)
        res["should_stop_calls"], res["forwards"] = len(calls), len(model.shapes)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_single(tmp_path, examples):
    import torch.multiprocessing as mp
    K = hellaswag.STOP_CHECK_EVERY
    # 2K+1 examples at batch_size 1: rank 0 has K+1 batches, rank 1 only K, and the check at slot K
    # falls after rank 1's last batch
    exs = (examples * 3)[:2 * K + 1]
    single = hellaswag.evaluate(
        make_tiny_model(), exs, "cpu", batch_size=1, return_predictions=True
    )
    mp.spawn(
        _ddp_worker, args=(2, str(tmp_path / "rendezvous"), exs, str(tmp_path)), nprocs=2, join=True
    )
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in per_rank:  # every rank returns the global counts
        for key in ("examples", "num_correct", "num_correct_norm", "acc", "acc_norm"):
            assert res[key] == single[key], key
        assert res["should_stop_calls"] == 2
        assert res["forwards"] == K + 1  # rank 1 runs a dummy forward in its last slot (FSDP)
    assert [len(res["predictions"]) for res in per_rank] == [K + 1, K]
    merged = sorted(tuple(p) for res in per_rank for p in res["predictions"])
    assert merged == single["predictions"]
    assert [i for i, _, _ in per_rank[0]["predictions"]] == list(range(0, len(exs), 2))


def test_every_rank_calls_the_model_in_every_slot(examples, monkeypatch):
    """Under FSDP each forward is a collective: a rank out of rows still calls the model, as often
    as rank 0 (a dummy batch; the DDP test above shows the results unchanged). Ranks simulated in
    one process, the all-reduce patched out."""
    monkeypatch.setattr(torch.distributed, "get_backend", lambda: "gloo")
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: None)  # each keeps its own
    exs = examples[:7]
    # 3 ranks: rank 0 has 3 examples (2 batches of 8 rows), ranks 1 and 2 have 2 (one batch);
    # 8 ranks: rank 7 has none at all
    for world_size, n_slots in ((3, 2), (8, 1)):
        n_examples = 0
        for rank in range(world_size):
            model = Recorder(UniformLM())
            res = hellaswag.evaluate(
                model, exs, "cpu", batch_size=2, rank=rank, world_size=world_size
            )
            n_examples += res["examples"]
            assert len(model.shapes) == n_slots, (world_size, rank, model.shapes)
            if world_size == 3 and rank > 0:
                # the dummy has its last real batch's shape
                assert model.shapes[1] == model.shapes[0]
        assert n_examples == len(exs)


# -----------------------------------------------------------------------------
# data: cache and download


def _no_network(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("network touched")
    monkeypatch.setattr(urllib.request, "urlopen", boom)
    import socket
    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(socket.socket, "connect", boom)


def test_present_cache_file_never_touches_network(tmp_path, monkeypatch):
    shutil.copy(FIXTURE, tmp_path / "hellaswag_val.jsonl")
    _no_network(monkeypatch)
    exs = hellaswag.load_examples("val", str(tmp_path))
    assert len(exs) == 12 and exs[0]["endings"] and isinstance(exs[0]["label"], int)
    assert len(hellaswag.load_examples("val", str(tmp_path), limit=5)) == 5
    # the default dir is $HELLASWAG_DIR
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path))
    assert len(hellaswag.load_examples("val", limit=3)) == 3


def test_default_dir_is_beside_the_script(monkeypatch):
    monkeypatch.delenv("HELLASWAG_DIR", raising=False)
    wanted = []

    def download(url, path, sha256=None):
        wanted.append(path)
        raise OSError("offline")
    monkeypatch.setattr(hellaswag, "download", download)
    with pytest.raises(hellaswag.HellaSwagError, match="offline"):
        hellaswag.load_examples("val")
    assert wanted == [str(REPO / "hellaswag" / "hellaswag_val.jsonl")]


class FakeResponse(io.BytesIO):
    def __init__(self, body, content_length=None):
        super().__init__(body)
        self.headers = {} if content_length is None else {"Content-Length": str(content_length)}


def _fake_urlopen(body, content_length=None, calls=None):
    def urlopen(url, timeout=None):
        if calls is not None:
            calls.append(url)
        return FakeResponse(body, content_length)
    return urlopen


def test_truncated_download_leaves_nothing(tmp_path, monkeypatch):
    body = FIXTURE.read_bytes()
    monkeypatch.setattr(
        urllib.request, "urlopen", _fake_urlopen(body[:100], content_length=len(body))
    )
    with pytest.raises(hellaswag.HellaSwagError) as err:
        hellaswag.load_examples("train", str(tmp_path / "cache"))
    msg = str(err.value)
    assert "\n" not in msg and "HELLASWAG_DIR" in msg and "hellaswag_train.jsonl" in msg
    assert "truncated" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # neither the final name nor a temp file


def test_val_download_with_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    body = FIXTURE.read_bytes()  # complete, but not the official val file
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body, content_length=len(body)))
    with pytest.raises(hellaswag.HellaSwagError, match="sha256"):
        hellaswag.load_examples("val", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_download_network_error_is_one_line(tmp_path, monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(hellaswag.HellaSwagError) as err:
        hellaswag.load_examples("val", str(tmp_path))
    assert "\n" not in str(err.value) and "HELLASWAG_DIR" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_successful_download_then_cached(tmp_path, monkeypatch):
    body = FIXTURE.read_bytes()
    calls = []
    monkeypatch.setattr(
        urllib.request, "urlopen", _fake_urlopen(body, content_length=len(body), calls=calls)
    )
    exs = hellaswag.load_examples("train", str(tmp_path))
    assert calls == [
        "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl"
    ]
    assert len(exs) == 12 and (tmp_path / "hellaswag_train.jsonl").read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["hellaswag_train.jsonl"]
    hellaswag.load_examples("train", str(tmp_path))
    assert len(calls) == 1  # second time from the cache
    # no Content-Length header: accepted as is
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body))
    assert len(hellaswag.load_examples("train", str(tmp_path / "again"))) == 12


def test_unknown_split():
    for split in ("dev", "test"):  # test has no labels
        with pytest.raises(
            hellaswag.HellaSwagError, match="unknown HellaSwag split.*use val or train"
        ):
            hellaswag.load_examples(split, "/nonexistent")


@needs_real
def test_real_val_file_is_the_official_one():
    data = REAL_VAL.read_bytes()
    assert hashlib.sha256(data).hexdigest() == hellaswag.KNOWN_SHA256["val"]
    exs = hellaswag.load_examples("val", HELLASWAG_DIR)  # every line passes the validation
    assert len(exs) == 10042 and all(len(ex["endings"]) == 4 for ex in exs)


# -----------------------------------------------------------------------------
# data: validation of the jsonl file


def _good_lines():
    return FIXTURE.read_text().splitlines()


def _edit(line_no, fn):
    """File text with line `line_no` (1-based) of the fixture replaced by fn(parsed line)."""
    def make():
        lines = _good_lines()
        lines[line_no - 1] = fn(json.loads(lines[line_no - 1]))
        return "\n".join(lines) + "\n"
    return make


def _without(key):
    return lambda ex: json.dumps({k: v for k, v in ex.items() if k != key})


# (id, file text maker, line named in the message or None, words the message must contain)
ENDINGS = '"endings" must be a list of 4 strings'
BAD_FILES = [
    ("missing-ctx", _edit(3, _without("ctx")), 3, '"ctx" must be a non-empty string'),
    (
        "empty-ctx",
        _edit(8, lambda ex: json.dumps(dict(ex, ctx=""))),
        8,
        '"ctx" must be a non-empty string',
    ),
    (
        "endings-not-a-list",
        _edit(5, lambda ex: json.dumps(dict(ex, endings="a b c d"))),
        5,
        ENDINGS,
    ),
    (
        "three-endings",
        _edit(7, lambda ex: json.dumps(dict(ex, endings=ex["endings"][:3]))),
        7,
        ENDINGS,
    ),
    (
        "ending-not-a-string",
        _edit(2, lambda ex: json.dumps(dict(ex, endings=ex["endings"][:3] + [7]))),
        2,
        ENDINGS,
    ),
    ("json-array-line", _edit(4, lambda ex: json.dumps(list(ex.values()))), 4, "not a JSON object"),
    ("invalid-json", _edit(9, lambda ex: json.dumps(ex)[:-5]), 9, "not valid JSON"),
    (
        "label-out-of-range",
        _edit(6, lambda ex: json.dumps(dict(ex, label=7))),
        6,
        '"label" must be the number 0, 1, 2 or 3',
    ),
    (
        "label-a-string",
        _edit(10, lambda ex: json.dumps(dict(ex, label="2"))),
        10,
        '"label" must be',
    ),
    ("missing-label", _edit(11, _without("label")), 11, '"label" must be'),
    (
        "not-utf8",
        lambda: ("\n".join(_good_lines()[:2]) + "\n").encode() + b"\xff\n",
        3,
        "not UTF-8",
    ),
    ("empty-file", lambda: "", None, "holds no examples"),
    ("blank-lines-only", lambda: "\n  \n\n", None, "holds no examples"),
]


def _write_bad(tmp_path, make):
    d = tmp_path / "bad"
    d.mkdir(exist_ok=True)
    path = d / "hellaswag_val.jsonl"
    data = make()
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return d, path


@pytest.mark.parametrize(
    "make,line_no,words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_bad_file_is_one_user_error_naming_the_line(tmp_path, monkeypatch, make, line_no, words):
    d, path = _write_bad(tmp_path, make)
    before = path.read_bytes()
    _no_network(monkeypatch)
    with pytest.raises(hellaswag.HellaSwagError) as err:
        hellaswag.load_examples("val", str(d))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and words in msg, msg
    if line_no is not None:
        assert f"line {line_no}:" in msg and "fix that line, or delete the file" in msg
    assert path.read_bytes() == before  # nothing good destroyed, nothing downloaded over it


def test_validation_stops_at_the_limit(tmp_path):
    d, _ = _write_bad(tmp_path, _edit(9, lambda ex: "{oops"))
    assert len(hellaswag.load_examples("val", str(d), limit=8)) == 8  # line 9 is never read
    with pytest.raises(hellaswag.HellaSwagError, match="line 9"):
        hellaswag.load_examples("val", str(d), limit=9)


# -----------------------------------------------------------------------------
# command line


def _cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("HELLASWAG_DIR", None)
    return subprocess.run([sys.executable, str(REPO / "hellaswag.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _main(capsys, *args):
    """hellaswag.main in this process (no interpreter + torch start-up per case) -> (exit code,
    out, err).
    Any exception other than SystemExit fails the test, which is what 'no traceback' means here."""
    code = 0
    try:
        hellaswag.main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _last_json(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(out) == {"examples", "acc", "acc_norm", "seconds"}
    return out


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "hs"
    d.mkdir()
    shutil.copy(FIXTURE, d / "hellaswag_val.jsonl")
    return str(d)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny GPT with block size 32 (several fixture rows are longer), exported as a transformers
    GPT2LMHeadModel folder, as `python train_gpt2.py --export CKPT` writes it."""
    model, _ = make_tiny_gpt(block_size=32)
    out = str(tmp_path_factory.mktemp("export") / "model_00000_hf")
    train_gpt2.export_to_transformers(model, out)
    return out


def test_hellaswag_does_not_import_train_gpt2():
    code = "import sys, hellaswag; assert 'train_gpt2' not in sys.modules, 'imported train_gpt2'"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_cli_exported_model_end_to_end(exported, data_dir):
    proc = _cli("--model", exported, "--data_dir", data_dir, "--device", "cpu", "--batch_size", "5")
    out = _last_json(proc)
    # the same model in this process, loaded as the CLI loads it: n_positions 32 is the max_len
    model = hellaswag.load_model(exported, torch.device("cpu"))
    assert hellaswag.model_max_len(model) == 32 and not model.training
    expected = hellaswag.evaluate_reference(
        model, fixture_examples(), "cpu", return_predictions=True
    )
    assert out["examples"] == 12
    assert out["acc_norm"] == expected["acc_norm"] and out["acc"] == expected["acc"]
    batched = hellaswag.evaluate(
        model, fixture_examples(), "cpu", batch_size=5, return_predictions=True
    )
    assert batched["predictions"] == expected["predictions"]  # a transformers model: same picks
    assert hellaswag.count_truncated(fixture_examples(), 32) > 0  # rows cut to the block size too


def test_cli_bad_input_in_a_real_process(tmp_path, data_dir):
    """Exit code and stderr of the real entry point (the in-process tests below cover each case):
    the removed --checkpoint flag is one error line too."""
    proc = _cli(
        "--checkpoint", str(tmp_path / "model_00000.pt"), "--data_dir", data_dir, timeout=120
    )
    assert_one_error_line(proc.stderr, proc.returncode, "--model")


@pytest.mark.parametrize(
    "make,line_no,words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_cli_bad_file_one_error_line(tmp_path, capsys, make, line_no, words):
    d, path = _write_bad(tmp_path, make)
    code, _, err = _main(capsys, "--model", "gpt2", "--data_dir", str(d), "--device", "cpu")
    assert_one_error_line(err, code, str(path), words, *((f"line {line_no}:",) if line_no else ()))


def test_cli_bad_arguments_one_error_line(tmp_path, data_dir, exported, capsys):
    checkpoint = tmp_path / "model_00000.pt"
    checkpoint.write_bytes(b"a training checkpoint")
    (tmp_path / "no_config").mkdir()
    (tmp_path / "bad_config").mkdir()
    (tmp_path / "bad_config" / "config.json").write_text("{not json")
    cpu = ("--data_dir", data_dir, "--device", "cpu")
    export_hint = ("cannot load it", "train_gpt2.py --export")
    cases = [
        (("--model", str(checkpoint), *cpu), export_hint),  # our .pt files are exported first
        (("--model", str(tmp_path / "no_config"), *cpu), export_hint),
        (
            ("--model", str(tmp_path / "bad_config"), *cpu),
            ("cannot load it", "bad_config", *export_hint),
        ),
        (("--model", exported, "--checkpoint", str(checkpoint), *cpu), ("unrecognized arguments",)),
        (("--model", "gpt2", "--split", "dev", "--data_dir", data_dir), ("--split",)),
        (("--model", "gpt2", "--split", "test", "--data_dir", data_dir), ("--split",)),
        (("--model", "gpt2", "--limit", "0", "--data_dir", data_dir), ("--limit must be >= 1",)),
        (
            ("--model", "gpt2", "--batch_size", "0", "--data_dir", data_dir),
            ("--batch_size must be >= 1",),
        ),
        (("--model", "gpt2", "--dtype", "bfloat16", "--data_dir", data_dir), ("--dtype",)),
        (("--model", "gpt2", "--device", "tpu", "--data_dir", data_dir), ("--device tpu",)),
        (("--model", "gpt2", "--device", "cuda:5", "--data_dir", data_dir), ("--device cuda:5",)),
        (("--model", "gpt2", "--device", "cuda:x", "--data_dir", data_dir), ("--device cuda:x",)),
        (("--data_dir", data_dir), ("--model",)),
    ]
    for args, words in cases:
        code, _, err = _main(capsys, *args)
        assert_one_error_line(err, code, *words)


def test_cli_help_one_default_per_flag():
    parser = hellaswag.build_parser()
    actions = [a for a in parser._actions if a.dest != "help"]
    assert all(a.help for a in actions)
    # the formatter adds the one default
    assert not any("default" in a.help.lower() for a in actions)
    text = " ".join(parser.format_help().split())
    assert text.count("(default:") == len(actions)
    assert list(next(a for a in actions if a.dest == "dtype").choices) == [
        "auto",
        "bf16",
        "fp16",
        "fp32",
    ]
    # how to evaluate our .pt files
    assert "--checkpoint" not in text and "train_gpt2.py --export" in text


# -----------------------------------------------------------------------------
# benchmark script


def test_bench_smoke_tiny_model(tmp_path, data_dir, capsys):
    """benchmarks/bench_hellaswag.py still runs with this API; its last stdout line is JSON."""
    spec = importlib.util.spec_from_file_location(
        "bench_hellaswag", REPO / "benchmarks/bench_hellaswag.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        [
            "--device",
            "cpu",
            "--compile",
            "0",
            "--data_dir",
            data_dir,
            "--limit",
            "6",
            "--n_layer",
            "1",
            "--n_head",
            "2",
            "--n_embd",
            "32",
            "--block_size",
            "32",
            "--dtype",
            "fp32",
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("reference", "batched", "speedup", "predictions_identical", "predictions_differing",
                "acc_norm_identical", "examples", "device", "torch", "dtype"):
        assert key in out, key
    assert {"seconds"} <= set(out["reference"]) and {"seconds", "first_call_seconds"} <= set(
        out["batched"]
    )
    assert out["examples"] == 6 and out["dtype"] == "fp32" and out["torch"] == torch.__version__
    assert (
        out["predictions_identical"] == 6
        and out["predictions_differing"] == 0
        and out["acc_norm_identical"]
    )
