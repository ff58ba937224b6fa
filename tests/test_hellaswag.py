"""
Tests for hellaswag.py. CPU only, offline.

Uses the real validation file from $HELLASWAG_DIR when that is set (CI points it at
shared/data/hellaswag), the hand-written fixture tests/fixtures/hellaswag_tiny.jsonl otherwise.
    TIKTOKEN_CACHE_DIR=.../tiktoken_cache HELLASWAG_DIR=.../hellaswag python -m pytest tests/test_hellaswag.py -q
"""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
for _cand in (REPO / "shared/data/tiktoken_cache", REPO.parent / "shared/data/tiktoken_cache"):
    if _cand.is_dir():
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(_cand))
        break

import hellaswag  # noqa: E402

FIXTURE = REPO / "tests/fixtures/hellaswag_tiny.jsonl"
HELLASWAG_DIR = os.environ.get("HELLASWAG_DIR")
REAL_VAL = Path(HELLASWAG_DIR) / "hellaswag_val.jsonl" if HELLASWAG_DIR else None
HAVE_REAL = REAL_VAL is not None and REAL_VAL.is_file()
needs_real = pytest.mark.skipif(not HAVE_REAL, reason="HELLASWAG_DIR not set (real val file not available)")
N_REAL = 200  # real examples for the batched-vs-reference check (keeps the runtime small)


# -----------------------------------------------------------------------------
# stand-in models


class TinyCausalLM(nn.Module):
    """A small GPT-like causal LM with the repo's model interface: forward(idx, targets=None)
    -> (logits, loss). Default PyTorch init gives logits with a spread of ~0.5, so the 4 endings
    get clearly different losses (no near-ties that float noise could flip)."""

    def __init__(self, vocab_size=50304, block_size=256, n_layer=2, n_head=2, n_embd=32):
        super().__init__()
        self.n_head = n_head
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList()
        for _ in range(n_layer):
            self.blocks.append(nn.ModuleDict(dict(
                ln1=nn.LayerNorm(n_embd), qkv=nn.Linear(n_embd, 3 * n_embd), proj=nn.Linear(n_embd, n_embd),
                ln2=nn.LayerNorm(n_embd), fc=nn.Linear(n_embd, 4 * n_embd), out=nn.Linear(4 * n_embd, n_embd))))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        C = x.size(-1)
        for blk in self.blocks:
            q, k, v = blk["qkv"](blk["ln1"](x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
            x = x + blk["proj"](y.transpose(1, 2).reshape(B, T, C))
            x = x + blk["out"](F.gelu(blk["fc"](blk["ln2"](x))))
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


def make_tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyCausalLM(**kw).eval()


class UniformLM(nn.Module):
    """All logits 0: every token costs ln(V), so the SUM picks the ending with the fewest tokens."""

    def __init__(self, vocab_size=50257):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab_size) + 0 * self.dummy, None


class BigramOracle(nn.Module):
    """Knows which tokens follow each token in the correct rows (context + labelled ending):
    their logits are +20, all others 0. Only helps if the evaluator scores token t with the
    logits at t-1 and only over the ending, so it checks the shift and the mask."""

    def __init__(self, examples, vocab_size=50257):
        super().__init__()
        self.vocab_size = vocab_size
        self.next_token = {}
        enc = hellaswag.get_encoder()
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


@pytest.fixture(scope="module")
def examples():
    """200 real val examples when HELLASWAG_DIR is set, else the 12 hand-written ones."""
    if HAVE_REAL:
        return hellaswag.load_examples("val", HELLASWAG_DIR, limit=N_REAL)
    return fixture_examples()


@pytest.fixture(scope="module")
def tiny_model():
    return make_tiny_model()


# -----------------------------------------------------------------------------
# rendering


def test_render_hand_checked():
    enc = hellaswag.get_encoder()
    ex = {"ctx": "A man is sitting on a roof. he", "label": 3,
          "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                      "is holding a rubik's cube.", "starts pulling up roofing on a roof."]}
    ctx = enc.encode("A man is sitting on a roof. he")
    ends = [enc.encode(" is using wrap to wrap a pair of skis."), enc.encode(" is ripping level tiles off."),
            enc.encode(" is holding a rubik's cube."), enc.encode(" starts pulling up roofing on a roof.")]
    # the space goes with the ending: " is" is a single GPT-2 token, different from "is"
    assert ends[0][0] == enc.encode(" is")[0] and enc.encode(" is") != enc.encode("is")
    assert enc.decode(ctx + ends[3]) == "A man is sitting on a roof. he starts pulling up roofing on a roof."

    c, e, label = hellaswag.tokenize_example(ex)
    assert c == ctx and e == ends and label == 3

    tokens, mask, label = hellaswag.render_example(ex)
    T = max(len(ctx) + len(x) for x in ends)
    assert tokens.shape == (4, T) and mask.shape == (4, T) and tokens.dtype == torch.long and label == 3
    for i, end in enumerate(ends):
        n = len(ctx) + len(end)
        assert tokens[i, :n].tolist() == ctx + end
        assert tokens[i, n:].tolist() == [0] * (T - n)  # right padding
        assert mask[i].tolist() == [0] * len(ctx) + [1] * len(end) + [0] * (T - n)


def test_render_second_hand_checked_example():
    enc = hellaswag.get_encoder()
    ex = {"ctx": "Fishing. He", "endings": ["casts.", "x", "sells the dock.", "dances."], "label": "0"}
    tokens, mask, label = hellaswag.render_example(ex)
    assert label == 0  # a string label (as some copies of the data have) becomes an int
    ctx = enc.encode("Fishing. He")
    for i, ending in enumerate(ex["endings"]):
        end = enc.encode(" " + ending)
        assert tokens[i, len(ctx):len(ctx) + len(end)].tolist() == end
        assert mask[i].sum().item() == len(end)
        assert mask[i, :len(ctx)].sum().item() == 0


def test_uniform_model_sum_picks_fewest_tokens():
    enc = hellaswag.get_encoder()
    ex = {"ctx": "The cat sat on the mat.", "label": 0,
          "endings": ["It purred loudly and then went to sleep in the warm sun by the window.",
                      "It slept.", "It looked at the dog across the room.", "It yawned and stretched."]}
    lengths = [len(enc.encode(" " + e)) for e in ex["endings"]]
    assert len(set(lengths)) == 4
    shortest = lengths.index(min(lengths))
    model = UniformLM()
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


def test_batched_matches_reference(examples, tiny_model):
    ref = hellaswag.evaluate_reference(tiny_model, examples, "cpu", return_predictions=True)
    # batch_size 7 (28 rows) does not divide the row count: the last batch gets dummy rows
    got = hellaswag.evaluate(tiny_model, examples, "cpu", batch_size=7, return_predictions=True)
    assert got["predictions"] == ref["predictions"]  # every example, both pred and pred_norm
    for key in ("examples", "num_correct", "num_correct_norm", "acc", "acc_norm"):
        assert got[key] == ref[key], key
    assert got["examples"] == len(examples)
    # a random model really distinguishes the endings (the check is not vacuous)
    assert len({p for _, p, _ in got["predictions"]}) == 4


def test_batched_is_independent_of_batch_size_and_chunking(examples, tiny_model):
    sub = examples[:24]
    base = hellaswag.evaluate(tiny_model, sub, "cpu", batch_size=40, bucket_multiple=32, loss_chunk=4096,
                              return_predictions=True)  # the GPU defaults
    other = hellaswag.evaluate(tiny_model, sub, "cpu", batch_size=1, bucket_multiple=16, loss_chunk=7,
                               return_predictions=True)
    assert other["predictions"] == base["predictions"]


def test_training_mode_restored(tiny_model):
    exs = fixture_examples()[:2]
    for fn in (hellaswag.evaluate, hellaswag.evaluate_reference):
        tiny_model.train()
        fn(tiny_model, exs, "cpu")
        assert tiny_model.training
        tiny_model.eval()
        fn(tiny_model, exs, "cpu")
        assert not tiny_model.training


def test_unlabeled_example_is_an_error(tiny_model):
    ex = dict(fixture_examples()[0], label="")
    with pytest.raises(ValueError, match="label"):
        hellaswag.evaluate(tiny_model, [ex], "cpu")


def test_empty_example_list(tiny_model):
    res = hellaswag.evaluate(tiny_model, [], "cpu")
    assert res["examples"] == 0 and res["acc_norm"] == 0.0


def test_plan_batches_few_fixed_shapes(examples):
    enc = hellaswag.get_encoder()
    lengths = []
    for ex in examples:
        ctx, ends, _ = hellaswag.tokenize_example(ex, enc)
        lengths += [len(ctx) + len(e) for e in ends]
    batches = hellaswag.plan_batches(lengths, rows_per_batch=32, multiple=32, cap=1024)
    seen = sorted(int(r) for ids, _ in batches for r in ids)
    assert seen == list(range(len(lengths)))  # every row exactly once
    for ids, T in batches:
        assert len(ids) <= 32 and T % 32 == 0 and max(lengths[r] for r in ids) <= T
    assert all(len(ids) == 32 for ids, _ in batches[:-1])
    assert len({T for _, T in batches}) <= 6  # HellaSwag rows are 17..166 tokens: buckets 32..192
    assert hellaswag.bucket_length(33) == 64 and hellaswag.bucket_length(64) == 64
    assert hellaswag.bucket_length(200, cap=180) == 180


def test_compiled_model_same_predictions_few_compiles(tiny_model):
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    exs = fixture_examples()
    eager = hellaswag.evaluate(tiny_model, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True)
    counter = CompileCounter()  # a torch.compile backend that runs the graph eagerly and counts compiles
    compiled = torch.compile(tiny_model, backend=counter)
    res = hellaswag.evaluate(compiled, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True)
    n_shapes = len({T for _, T in res_shapes(exs, 8, 16)})
    assert n_shapes >= 3  # the test really exercises several buckets
    assert res["predictions"] == eager["predictions"]
    # 12 batches, but only a few graphs: one per bucket length at most (dynamo may go dynamic sooner)
    assert 1 <= counter.frame_count <= n_shapes
    again = hellaswag.evaluate(compiled, exs, "cpu", batch_size=2, bucket_multiple=16)
    assert again["acc_norm"] == res["acc_norm"]
    assert counter.frame_count <= n_shapes  # a second pass compiles nothing new
    torch._dynamo.reset()


@pytest.mark.skipif(os.environ.get("HELLASWAG_TEST_INDUCTOR") != "1",
                    reason="inductor compile takes ~1 min on 2 CPU cores; set HELLASWAG_TEST_INDUCTOR=1")
def test_inductor_compiled_model_same_predictions(tiny_model):
    torch._dynamo.reset()
    exs = fixture_examples()
    eager = hellaswag.evaluate(tiny_model, exs, "cpu", batch_size=2, bucket_multiple=16, return_predictions=True)
    res = hellaswag.evaluate(torch.compile(tiny_model), exs, "cpu", batch_size=2, bucket_multiple=16,
                             return_predictions=True)
    assert res["predictions"] == eager["predictions"]
    torch._dynamo.reset()


def res_shapes(exs, rows_per_batch, multiple):
    enc = hellaswag.get_encoder()
    lengths = []
    for ex in exs:
        ctx, ends, _ = hellaswag.tokenize_example(ex, enc)
        lengths += [len(ctx) + len(e) for e in ends]
    return hellaswag.plan_batches(lengths, rows_per_batch, multiple)


# -----------------------------------------------------------------------------
# DDP split


def test_shard_indices_partition():
    for n in (0, 1, 7, 10042):
        for ws in (1, 2, 3, 8):
            shards = [hellaswag.shard_indices(n, r, ws) for r in range(ws)]
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1


def _ddp_worker(rank, world_size, init_file, exs, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        model = make_tiny_model()
        res = hellaswag.evaluate(model, exs, "cpu", batch_size=3, rank=rank, world_size=world_size,
                                 return_predictions=True)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_single(tmp_path, examples):
    import torch.multiprocessing as mp
    exs = examples[:24]
    single = hellaswag.evaluate(make_tiny_model(), exs, "cpu", batch_size=3, return_predictions=True)
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "rendezvous"), exs, str(tmp_path)), nprocs=2, join=True)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for res in per_rank:  # every rank returns the global counts
        for key in ("examples", "num_correct", "num_correct_norm", "acc", "acc_norm"):
            assert res[key] == single[key], key
    merged = sorted(tuple(p) for res in per_rank for p in res["predictions"])
    assert merged == single["predictions"]
    assert [i for i, _, _ in per_rank[0]["predictions"]] == list(range(0, len(exs), 2))


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
    # default dir comes from $HELLASWAG_DIR
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path))
    assert hellaswag.default_data_dir() == str(tmp_path)
    assert len(hellaswag.load_examples("val", limit=3)) == 3


def test_default_dir_is_beside_the_script(monkeypatch):
    monkeypatch.delenv("HELLASWAG_DIR", raising=False)
    assert Path(hellaswag.default_data_dir()) == REPO / "hellaswag"


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
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body[:100], content_length=len(body)))
    with pytest.raises(hellaswag.HellaSwagDataError) as err:
        hellaswag.load_examples("train", str(tmp_path / "cache"))
    msg = str(err.value)
    assert "\n" not in msg and "HELLASWAG_DIR" in msg and "hellaswag_train.jsonl" in msg
    assert "truncated" in msg
    assert list((tmp_path / "cache").iterdir()) == []  # neither the final name nor a temp file


def test_val_download_with_wrong_hash_leaves_nothing(tmp_path, monkeypatch):
    body = FIXTURE.read_bytes()  # complete, but not the official val file
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body, content_length=len(body)))
    with pytest.raises(hellaswag.HellaSwagDataError, match="sha256"):
        hellaswag.load_examples("val", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_download_network_error_is_one_line(tmp_path, monkeypatch):
    def urlopen(url, timeout=None):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(hellaswag.HellaSwagDataError) as err:
        hellaswag.load_examples("val", str(tmp_path))
    assert "\n" not in str(err.value) and "HELLASWAG_DIR" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_successful_download_then_cached(tmp_path, monkeypatch):
    body = FIXTURE.read_bytes()
    calls = []
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body, content_length=len(body), calls=calls))
    exs = hellaswag.load_examples("train", str(tmp_path))
    assert calls == ["https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_train.jsonl"]
    assert len(exs) == 12 and (tmp_path / "hellaswag_train.jsonl").read_bytes() == body
    assert [p.name for p in tmp_path.iterdir()] == ["hellaswag_train.jsonl"]
    hellaswag.load_examples("train", str(tmp_path))
    assert len(calls) == 1  # second time from the cache
    # no Content-Length header: accepted as is
    monkeypatch.setattr(urllib.request, "urlopen", _fake_urlopen(body))
    assert len(hellaswag.load_examples("test", str(tmp_path))) == 12


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown HellaSwag split"):
        hellaswag.load_examples("dev", "/nonexistent")


@needs_real
def test_real_val_file_is_the_official_one():
    data = REAL_VAL.read_bytes()
    assert hashlib.sha256(data).hexdigest() == hellaswag.KNOWN_SHA256["val"]
    exs = hellaswag.load_examples("val", HELLASWAG_DIR)
    assert len(exs) == 10042 and all(len(ex["endings"]) == 4 for ex in exs)


# -----------------------------------------------------------------------------
# command line


def _cli(*args, timeout=300):
    env = dict(os.environ)
    env.pop("HELLASWAG_DIR", None)
    return subprocess.run([sys.executable, str(REPO / "hellaswag.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


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


def test_cli_checkpoint_end_to_end(tmp_path, data_dir):
    train_gpt2 = pytest.importorskip("train_gpt2")
    cfg = train_gpt2.GPTConfig(block_size=256, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    torch.manual_seed(0)
    model = train_gpt2.GPT(cfg)
    path = tmp_path / "model_00000.pt"
    torch.save({"model": model.state_dict(), "config": asdict(cfg), "step": 0, "args": {}}, path)
    out = _last_json(_cli("--checkpoint", str(path), "--data_dir", data_dir, "--device", "cpu",
                          "--batch_size", "5"))
    expected = hellaswag.evaluate(model, fixture_examples(), "cpu")
    assert out["examples"] == 12
    assert out["acc_norm"] == expected["acc_norm"] and out["acc"] == expected["acc"]


def test_cli_model_dir_end_to_end_and_reference(tmp_path, data_dir):
    pytest.importorskip("train_gpt2")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=64, n_positions=256))
    hf.save_pretrained(tmp_path / "hf")
    args = ("--model", str(tmp_path / "hf"), "--data_dir", data_dir, "--device", "cpu", "--limit", "10")
    batched = _last_json(_cli(*args))
    reference = _last_json(_cli(*args, "--reference"))
    assert batched["examples"] == reference["examples"] == 10
    assert batched["acc_norm"] == reference["acc_norm"] and batched["acc"] == reference["acc"]


def test_cli_bad_input_one_line_exit_1(tmp_path, data_dir):
    for args in (("--checkpoint", str(tmp_path / "missing.pt"), "--data_dir", data_dir),
                 ("--model", "gpt2", "--split", "dev", "--data_dir", data_dir),
                 ("--model", "gpt2", "--split", "val", "--limit", "0", "--data_dir", data_dir)):
        proc = _cli(*args, timeout=120)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "error" in proc.stderr
