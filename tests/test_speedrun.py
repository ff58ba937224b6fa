"""
--arch speedrun, the warmup-stable-decay schedule and --recipe fast (CPU, tiny sizes):

  * the pieces: QK-norm gives each head's q and k unit RMS; attention-out, MLP-down and head
    weights start at zero and move once trained; WSD is flat, then a straight line to the floor;
    the head is a parameter (and an optimizer state) of its own in checkpoints;
  * the recipe's values resolve under explicit flags, and the default run's settings stay
    build-nanogpt's; bad combinations are one line each; a continued run refuses a changed
    recipe setting, or records it with --resume;
  * with --recipe fast (Muon, the embedding and head groups, WSD, soft-cap, grad clipping active):
    2-process DDP equals one process, FSDP equals DDP, a run killed with SIGKILL continues bit
    for bit with the same command, torch.compile sees one graph, and the export
    (NanoChatForCausalLM) gives the same logits, soft-cap included, and generates text.
"""

import json
import signal

import pytest
import torch

import train_gpt2 as tg
from results import write_training_params as wtp
from helpers import TINY, assert_one_error_line, checkpoints, export_logit_gap, ok, record_map, \
    records, run_cli, state_dicts_equal, work_dir
from test_model import count_graphs
from test_trainer import logged_past_checkpoint, signal_run_when

# --recipe fast at the tiny shape; a low clip so that clipping acts at every step, a checkpoint
# every 2 steps to continue from (6 steps: warmup 0-1, flat 2-4, cooldown from step 4.3)
FAST = ["--recipe", "fast", *TINY, "--grad_clip", "0.05", "--checkpoint_every", "2",
        "--val_tokens", "320"]
ZERO_INIT = ("attn.c_proj.weight", "mlp.c_proj.weight")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    yield from work_dir(tmp_path_factory, "speedrun")


def fast_argv(work, log_dir):
    return [*FAST, "--data_dir", work["data"], "--log_dir", log_dir]


def fast_run(work, name, *extra, ddp=False):
    log_dir = work["root"] / name
    ok(run_cli(work["env"], *fast_argv(work, log_dir), *extra, ddp=ddp))
    return log_dir


def run_main(argv, capsys):
    """main() in this process (one process needs no subprocess): -> what it printed."""
    capsys.readouterr()
    assert tg.main([str(a) for a in argv]) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def single(work):
    assert tg.main([str(a) for a in fast_argv(work, work["root"] / "single")]) == 0  # in-process
    return work["root"] / "single"


@pytest.fixture(scope="module")
def ddp(work):
    return fast_run(work, "ddp", ddp=True)


def load(log_dir, step=6):
    return torch.load(log_dir / f"model_{step:05d}.pt", map_location="cpu", weights_only=True)


def tiny_speedrun(seed=0, **overrides):
    torch.manual_seed(seed)
    return tg.GPT(tg.GPTConfig(arch="speedrun", block_size=64, n_layer=2, n_head=2, n_embd=64,
                               logit_softcap=15.0, **overrides))


# -----------------------------------------------------------------------------
# the pieces


def test_qk_norm_gives_each_head_unit_rms_q_and_k(monkeypatch):
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(
        tg.F,
        "scaled_dot_product_attention",
        lambda q, k, v, **kw: seen.append((q, k)) or real(q, k, v, **kw),
    )
    model = tiny_speedrun()
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.mul_(7.0)  # far from unit RMS without the norm
        model(torch.randint(0, tg.GPT2_VOCAB, (2, 16)))
    assert len(seen) == 2
    for q, k in seen:
        assert q.shape == (2, 2, 16, 32)  # (B, heads, T, head size)
        for t in (q, k):
            rms = t.pow(2).mean(-1).sqrt()  # per batch row, head and position
            assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4), rms


def test_speedrun_shape_size_and_zero_init():
    args = tg.get_args(["--recipe", "fast"])
    tg.resolve_defaults(args, 4)
    config = tg.model_config_from_args(args)
    shape = (config.n_layer, config.n_embd, config.n_head, config.logit_softcap)
    assert shape == (12, 768, 6, 15.0)
    with torch.device("meta"):
        model = tg.GPT(config)
    names = dict(model.named_parameters())
    assert "lm_head.weight" in names and model.lm_head.weight is not model.transformer.wte.weight
    assert model.num_params() == 162_201_600  # 124M + the untied head's 38.6M
    # MFU's 6N leaves out the embedding lookup; the untied head is a matmul and counts
    assert model.num_params(non_embedding=True) == 162_201_600 - 50304 * 768
    assert not [n for n in names if n.endswith(".bias") or "ln_" in n]  # no biases, no norm weights
    states, activations = tg.memory_estimate(
        config, args, model.num_params(), sum(p.numel() for p in tg.muon_params(model)), 4
    )
    assert states + activations < 0.9 * 24, "the README's 3090 command does not fit by the estimate"
    fresh = tiny_speedrun()
    for name, p in fresh.named_parameters():
        assert (p.abs().max() == 0) == (name.endswith(ZERO_INIT) or name == "lm_head.weight"), name


def test_wsd_is_flat_then_falls_linearly_to_the_floor():
    warmup, max_steps, frac, floor = 3, 40, 0.25, 0.1
    f = [tg.lr_factor(s, warmup, max_steps, floor, "wsd", frac) for s in range(max_steps + 3)]
    assert f[:warmup] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(v == 1.0 for v in f[warmup:31])  # flat until the last 10 steps
    line = [floor + (1 - floor) * (40 - s) / 10 for s in range(30, 41)]
    assert f[30:max_steps + 1] == pytest.approx(line)
    assert f[max_steps:] == pytest.approx([floor] * 3)
    # the default stays the cosine: the same numbers as build-nanogpt's formula
    assert tg.lr_factor(21, 3, 40, 0.1) == tg.lr_factor(21, 3, 40, 0.1, "cosine", None)


# -----------------------------------------------------------------------------
# the arguments


def test_recipe_values_resolve_under_explicit_flags():
    def resolved(*argv, names):
        args = tg.get_args(list(argv))
        tg.resolve_defaults(args, 1)
        return tuple(getattr(args, name) for name in names.split())

    fast = ("--recipe", "fast")
    assert resolved(*fast, "--optimizer", "adamw", "--max_steps", "10", "--logit_softcap", "0",
                    names="arch optimizer max_steps logit_softcap muon_lr muon_adjust_lr") == (
        "speedrun", "adamw", 10, 0.0, None, None)  # Muon's settings only with Muon
    assert resolved(*fast, names="lr_schedule cooldown_frac warmup_steps min_lr_ratio") == (
        "wsd", 0.286, 0, 0.0)
    assert resolved(*fast, names="embed_lr head_lr weight_decay muon_lr muon_adjust_lr") == (
        0.3, 0.002, 0.0, 0.02, "original")
    # no recipe: build-nanogpt's settings, and nothing of the new ones
    assert resolved(names="arch optimizer lr_schedule max_steps max_lr warmup_steps weight_decay "
                          "min_lr_ratio cooldown_frac logit_softcap recipe embed_lr") == (
        "gpt2", "adamw", "cosine", 19073, 6e-4, 715, 0.1, 0.1, None, None, None, None)


@pytest.mark.parametrize("argv,needle", [
    (["--logit_softcap", "15", "--arch", "gpt2"],
     "--logit_softcap is used only with --arch speedrun"),
    (["--logit_softcap", "-1"], "--logit_softcap"),
    (["--cooldown_frac", "1.5"], "--cooldown_frac"),
    (["--lr_schedule", "nope"], "--lr_schedule"),
    (["--arch", "nope"], "--arch"),
    (["--recipe", "fast", "--lr_schedule", "cosine", "--cooldown_frac", "0.3"],
     "--cooldown_frac is used only with --lr_schedule wsd"),
    (["--embed_lr", "0.1", "--arch", "modern"], "--embed_lr is used only with --arch speedrun"),
])
def test_bad_combinations_are_one_line(capsys, tmp_path, argv, needle):
    code = tg.main([*argv, "--log_dir", str(tmp_path / "log"), "--data_dir", str(tmp_path)])
    assert_one_error_line(capsys.readouterr().err, code, needle)
    assert not (tmp_path / "log").exists()


def test_a_changed_recipe_setting_is_refused_or_recorded_with_resume(single):
    ckpt = load(single)

    def compare(*argv):
        args = tg.get_args([*argv, "--log_dir", str(single), "--data_dir",
                            ckpt["args"]["data_dir"]])
        tg.resolve_defaults(args, 1)
        return tg.compare_settings(args, tg.model_config_from_args(args), ckpt, "model_00006.pt")

    with pytest.raises(tg.UserError, match=r"head_lr 0.002 -> 0.004\).*add --resume"):
        compare(*FAST, "--head_lr", "0.004")
    assert compare(*FAST, "--head_lr", "0.004", "--resume") == [("head_lr", 0.002, 0.004)]
    with pytest.raises(tg.UserError, match="arch speedrun -> gpt2") as e:  # the recipe left out
        compare(*FAST[2:], "--resume")
    assert "recipe fast -> None" in str(e.value) and "add --resume" not in str(e.value)


# -----------------------------------------------------------------------------
# --recipe fast, end to end


def test_fast_run_head_apart_weights_moved_and_wsd_logged(single):
    config = json.loads((single / "config.json").read_text())
    assert (config["recipe"], config["arch"], config["lr_schedule"]) == ("fast", "speedrun", "wsd")
    muon, adamw = config["optimizer_settings"]["muon"], config["optimizer_settings"]["adamw"]
    assert muon["weight_decay"] == 0.0  # torch's Muon default is 0.1
    assert muon["adjust_lr_fn"] == "original"
    assert (adamw["embed_lr"], adamw["head_lr"]) == (0.3, 0.002)
    final = load(single)
    sd = final["model"]
    assert sd["lm_head.weight"].data_ptr() != sd["transformer.wte.weight"].data_ptr()
    assert not torch.equal(sd["lm_head.weight"], sd["transformer.wte.weight"])
    assert {"lm_head.weight", "transformer.wte.weight"} <= final["optimizer"]["state"].keys()
    for name in [n for n in sd if n.endswith(ZERO_INIT)] + ["lm_head.weight"]:
        assert sd[name].abs().max() > 0, f"{name} never moved from its zero init"
    # norm 0.05 clips every step; the logged LR is --max_lr times the WSD factor
    assert all(float(v) > 0.05 for _, _, v in records(single, names=("norm",)))
    for step, _, v in records(single, names=("lr",)):
        expected = 1.8e-3 * tg.lr_factor(step, 2, 6, 0.0, "wsd", 0.286)
        assert float(v) == pytest.approx(expected, rel=1e-6)
    # the write-up shows the resolved recipe: its schedule, the untied head, both optimizers
    rows = dict(wtp.summary_rows(wtp.load_run(single)))
    assert rows["recipe"].startswith("--recipe fast")
    assert rows["schedule"].startswith("warmup-stable-decay: max_lr 0.0018, 2 warmup steps, flat, "
                                       "then linearly over the last 0.286 of the steps")
    assert "the untied head included" in rows["parameters"]
    assert "embed_lr 0.3" in rows["optimizer"] and "Muon" in rows["optimizer"]


def assert_same_training(a_dir, b_dir, what):
    """The same losses and grad norms (clipping depends on them) within 1e-4, and the same final
    weights: AdamW's (embedding, head) within 1e-3 of each tensor's norm, Muon's within 3e-2,
    and the zero-initialised projections within 0.3. Muon's Newton-Schulz runs in bf16: the
    reductions' fp32 rounding flips bf16 roundings, and a projection's first updates come from
    the nearly rank-1 gradients of a head that was zero a step before, whose orthogonalised
    directions such a flip changes (measured: 1-2e-2 after its first update, ~0.15 after five;
    the losses still agree to 1e-5)."""
    a, b = (record_map(d, names=("train", "val", "norm")) for d in (a_dir, b_dir))
    assert set(a) == set(b) and {(s, n) for s in range(6) for n in ("train", "norm")} <= set(a)
    for key in sorted(a):
        gap = abs(float(a[key]) - float(b[key]))
        assert gap < 1e-4, f"{key}: {what[0]} {a[key]}, {what[1]} {b[key]}"
    mine, ref = load(b_dir), load(a_dir)
    assert mine["model"].keys() == ref["model"].keys()
    assert mine["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()
    for k in ref["model"]:
        rel = ((mine["model"][k] - ref["model"][k]).norm() / ref["model"][k].norm()).item()
        tol = 0.3 if k.endswith(ZERO_INIT) else 3e-2 if k.startswith("transformer.h.") else 1e-3
        assert rel < tol, f"{k}: relative difference {rel:.1e}"


def test_fast_ddp_equals_one_process(single, ddp):
    assert_same_training(single, ddp, ("1 process", "2 processes"))


def test_fast_fsdp_equals_ddp(work, ddp):
    assert_same_training(ddp, fast_run(work, "fsdp", "--fsdp", "1", ddp=True), ("DDP", "FSDP"))


def test_fast_run_killed_then_continued_is_bit_for_bit(work, single, capsys):
    """SIGKILL once a step past checkpoint 2 is logged, then the same command."""
    log_dir = work["root"] / "killed"
    code, _, _ = signal_run_when(work["env"], [str(a) for a in fast_argv(work, log_dir)],
                                 work["root"] / "killed.out",
                                 lambda: logged_past_checkpoint(log_dir, steps_past=1),
                                 "a step past a checkpoint", signal.SIGKILL)
    assert code == -signal.SIGKILL and "model_00006.pt" not in checkpoints(log_dir)
    printed = run_main(fast_argv(work, log_dir), capsys)
    assert "continuing from" in printed
    assert records(log_dir) == records(single)
    mine, ref = load(log_dir), load(single)
    assert state_dicts_equal(mine["model"], ref["model"])
    for k in ref["optimizer"]["state"]:
        assert state_dicts_equal(mine["optimizer"]["state"][k], ref["optimizer"]["state"][k]), k


def test_compiled_fast_model_has_no_graph_break():
    model = tiny_speedrun()
    model.activation_checkpointing = True  # the 24 GB option: still one graph
    compiled, counts, breaks = count_graphs(model)
    x, y = torch.randint(0, tg.GPT2_VOCAB, (2, 2, 16))
    _, loss = compiled(x, y)
    loss.backward()
    model.eval()
    with torch.no_grad():
        compiled(x)  # logits only, as HellaSwag and the samples call it
    assert counts == {"forward": 2, "backward": 1} and not breaks, (counts, dict(breaks))


def test_export_is_nanochat_with_the_same_logits_and_generates(work, single, capsys):
    from transformers import AutoModelForCausalLM, pipeline

    out = work["root"] / "exported"
    assert tg.main(["--export", str(single / "model_00006.pt"), "--export_dir", str(out)]) == 0
    assert "NanoChatForCausalLM" in capsys.readouterr().out
    gap, shape = export_logit_gap(single / "model_00006.pt", out)
    assert shape == (2, 40, tg.GPT2_VOCAB) and gap < 1e-5
    generate = pipeline("text-generation", model=str(out))
    text = generate("Hello, I'm", max_new_tokens=4, do_sample=False)
    assert text[0]["generated_text"].startswith("Hello, I'm")
    # logits beyond the cap: the soft-cap is part of the export
    model = tiny_speedrun().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        model.lm_head.weight.mul_(10.0)
    tg.export_to_transformers(model, str(out / "capped"))
    hf = AutoModelForCausalLM.from_pretrained(str(out / "capped")).eval()
    idx = torch.randint(0, tg.GPT2_VOCAB, (2, 40))
    with torch.no_grad():
        ours, theirs = model(idx)[0][..., :tg.GPT2_VOCAB], hf(idx).logits
    assert hf.config.final_logit_softcapping == 15.0 and ours.abs().max() > 14.9
    assert (ours - theirs).abs().max().item() < 1e-5
