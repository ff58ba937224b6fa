"""The GPT module: faithful to GPT-2, interoperable with transformers, and the modern variant."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_gpt2
from train_gpt2 import GPT, GPT2_VOCAB, MODEL_PRESETS, GPTConfig

REPO = Path(__file__).resolve().parents[1]
TINY = dict(block_size=64, n_layer=2, n_head=2, n_embd=64)


def tiny_model(arch="gpt2", seed=0, **overrides):
    torch.manual_seed(seed)
    return GPT(GPTConfig(arch=arch, **{**TINY, **overrides}))


def count_params(config):
    with torch.device("meta"):  # no memory, so even gpt2-xl is instant
        return GPT(config).num_params()


def test_default_config_is_gpt2_124m():
    config = GPTConfig()
    assert (config.block_size, config.vocab_size, config.n_layer, config.n_head,
            config.n_embd) == (1024, 50304, 12, 12, 768)
    assert count_params(config) == 124_475_904


@pytest.mark.parametrize("name, expected", [
    # transformers' published counts (vocab 50257) plus 47 padded embedding rows
    ("gpt2-medium", 354_823_168 + 47 * 1024),
    ("gpt2-large", 774_030_080 + 47 * 1280),
    ("gpt2-xl", 1_557_611_200 + 47 * 1600),
])
def test_presets_match_published_sizes(name, expected):
    n_layer, n_head, n_embd = MODEL_PRESETS[name]
    assert count_params(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)) == expected


def test_gpt2_structure():
    model = tiny_model()
    assert model.lm_head.weight is model.transformer.wte.weight  # tied head
    assert model.lm_head.bias is None
    block = model.transformer.h[0]
    assert isinstance(block.ln_1, torch.nn.LayerNorm) and block.ln_1.bias is not None
    for linear in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
        assert linear.bias is not None and torch.all(linear.bias == 0)
    assert block.mlp.c_fc.out_features == 4 * 64
    assert list(model.named_buffers()) == []  # is_causal attention: no mask buffer


def test_residual_projections_are_scaled_at_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=12, n_head=4, n_embd=256, block_size=64, vocab_size=1024))
    block = model.transformer.h[0]
    assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 24**0.5, rel=0.05)
    assert block.attn.c_proj.weight.std().item() == pytest.approx(0.02 / 24**0.5, rel=0.05)


def test_modern_arch_parameter_count_within_one_percent():
    gpt2, modern = count_params(GPTConfig()), count_params(GPTConfig(arch="modern"))
    assert abs(modern - gpt2) / gpt2 < 0.01
    model = tiny_model("modern")
    assert "wpe" not in model.transformer  # RoPE, no learned positions
    assert isinstance(model.transformer.h[0].ln_1, torch.nn.RMSNorm)
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_causality(arch):
    """Changing token t never changes the logits before t."""
    model = tiny_model(arch).eval()
    idx = torch.randint(0, GPT2_VOCAB, (2, 40))
    changed = idx.clone()
    changed[:, 25] = (changed[:, 25] + 1) % GPT2_VOCAB
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    assert torch.equal(a[:, :25], b[:, :25])
    assert not torch.allclose(a[:, 25:], b[:, 25:])


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_loss_falls_on_a_tiny_batch(arch):
    model = tiny_model(arch, vocab_size=1024)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    idx = torch.randint(0, 1000, (4, 33))
    losses = []
    for _ in range(25):
        _, loss = model(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(1024.0)).item(), abs=0.3)
    assert losses[-1] < losses[0] - 3


def test_bf16_loss_is_computed_in_fp32_and_returned_alone():
    """Under bf16 autocast the logits are bf16 but the loss is an fp32 cross-entropy, and the
    forward with targets returns no logits (they would outlive the micro-step)."""
    model = tiny_model()
    idx = torch.randint(0, GPT2_VOCAB, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        bf16_logits, _ = model(idx[:, :-1])
    assert logits is None and loss.dtype == torch.float32 and bf16_logits.dtype == torch.bfloat16
    ref = F.cross_entropy(bf16_logits.float().view(-1, bf16_logits.size(-1)),
                          idx[:, 1:].reshape(-1))
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()


def count_graphs(model):
    """torch.compile(model) with a counting backend: -> (compiled, counts of forward and backward
    graphs compiled, dynamo's graph-break counter)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._dynamo.utils import counters
    from torch._functorch.aot_autograd import make_boxed_func

    torch._dynamo.reset()
    counters.clear()
    counts = {"forward": 0, "backward": 0}

    def compiler(kind):
        def compile_fn(gm, example_inputs):
            counts[kind] += 1
            return make_boxed_func(gm.forward)
        return compile_fn

    backend = aot_autograd(fw_compiler=compiler("forward"), bw_compiler=compiler("backward"))
    return torch.compile(model, backend=backend), counts, counters["graph_break"]


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_compiled_forward_and_backward_have_no_graph_breaks(arch):
    """The compiler sees the whole loss: one forward and one backward graph for a training step,
    one graph for a validation forward (with ignored targets) and one for a HellaSwag forward."""
    model = tiny_model(arch)
    compiled, counts, breaks = count_graphs(model)
    x, y = torch.randint(0, GPT2_VOCAB, (2, 2, 16))
    _, loss = compiled(x, y)
    loss.backward()
    assert counts == {"forward": 1, "backward": 1} and not breaks, (counts, dict(breaks))
    model.eval()
    with torch.no_grad():
        y[1] = -1  # a padded val batch
        compiled(x, y)
        compiled(x)  # logits only, as HellaSwag calls it
    assert counts == {"forward": 3, "backward": 1} and not breaks, (counts, dict(breaks))


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_compiled_loss_and_gradients_equal_the_eager_ones(arch):
    """torch.compile must not change the math: equal loss and gradients in fp32, ignored
    targets included."""
    model = tiny_model(arch)
    compiled, _, _ = count_graphs(model)
    x, y = torch.randint(0, GPT2_VOCAB, (2, 2, 16))
    y[0, :5] = -1
    grads = []
    for m in (model, compiled):
        model.zero_grad()
        _, loss = m(x, y)
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (eager_loss, eager_grads), (compiled_loss, compiled_grads) = grads
    assert compiled_loss == pytest.approx(eager_loss, rel=1e-6)
    for a, b in zip(eager_grads, compiled_grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_export_loads_in_transformers_with_the_same_logits(tmp_path, arch):
    """--arch gpt2 -> GPT2LMHeadModel, --arch modern -> LlamaForCausalLM: the same logits over
    the real vocab (the padding rows are dropped), loaded by AutoModelForCausalLM."""
    from transformers import AutoModelForCausalLM

    model = tiny_model(arch).eval()
    train_gpt2.export_to_transformers(model, str(tmp_path))
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    expected = {"gpt2": "GPT2LMHeadModel", "modern": "LlamaForCausalLM"}[arch]
    assert type(hf).__name__ == expected and hf.config.vocab_size == GPT2_VOCAB
    idx = torch.randint(0, GPT2_VOCAB, (2, 50))
    with torch.no_grad():
        ref = hf(idx).logits
        ours, _ = model(idx)
    assert (ours[..., :GPT2_VOCAB] - ref).abs().max().item() < 1e-4


def test_export_writes_a_usable_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    train_gpt2.export_to_transformers(tiny_model(), str(tmp_path))
    if not (tmp_path / "vocab.json").exists():
        pytest.skip("no tiktoken cache here (TIKTOKEN_CACHE_DIR unset and no network)")
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("Hello world").input_ids == [15496, 995]


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_generation_is_reproducible(arch):
    model = tiny_model(arch)
    prompt = torch.randint(0, GPT2_VOCAB, (3, 5))
    out1 = model.generate(prompt, 12, generator=torch.Generator().manual_seed(42))
    out2 = model.generate(prompt, 12, generator=torch.Generator().manual_seed(42))
    out3 = model.generate(prompt, 12, generator=torch.Generator().manual_seed(43))
    assert out1.shape == (3, 17) and torch.equal(out1[:, :5], prompt)
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, out3)
    assert out1.max().item() < GPT2_VOCAB  # never a padding id
    assert model.training  # generate restores the mode it found


def test_generation_runs_past_block_size_and_on_a_compiled_wrapper():
    model = tiny_model(block_size=16)
    compiled = torch.compile(model)  # generate is reached through the wrapper and runs eagerly
    prompt = torch.randint(0, GPT2_VOCAB, (1, 10))
    out = compiled.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    ref = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 30) and torch.equal(out, ref)


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="block_size"):
        tiny_model(block_size=8)(torch.zeros(1, 9, dtype=torch.long))


def test_import_is_silent_and_side_effect_free(tmp_path):
    code = ("import sys, torch, train_gpt2\n"
            "assert not torch.cuda.is_initialized()\n"
            "heavy = [m for m in ('transformers', 'tiktoken', 'datasets') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env_path = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""
    assert list(tmp_path.iterdir()) == []  # no files or folders created
