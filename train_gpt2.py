"""
Train GPT-2 (124M and up) from scratch on FineWeb-Edu token shards, on one GPU or several.

    python fineweb.py                                          # the token shards, once
    python train_gpt2.py                                       # one GPU (or CPU / Apple MPS)
    torchrun --standalone --nproc_per_node=4 train_gpt2.py     # 4 GPUs on one box

Running the same command again continues the run from its latest checkpoint in --log_dir, so a
preempted or crashed run needs nothing but a restart (`torchrun --max-restarts=N` too).

The file reads top to bottom, in the order of the lecture:
  1. the model: GPT-2 (or --arch modern: RoPE + SwiGLU + RMSNorm; --arch speedrun: the
     modded-nanogpt block), its loss, sampling, export;
  2. the data: uint16 shards read as one stream, a loader indexed by step, the val set;
  3. the optimizer and the learning-rate schedule (AdamW, or Muon for the block matrices;
     cosine or warmup-stable-decay);
  4. checkpoints: atomic saves, and which checkpoint a run continues from;
  5. evaluation: val loss, HellaSwag (hellaswag.py), text samples;
  6. the arguments, and --recipe fast (the speedrun's settings in one flag);
  7. the run: devices, processes (DDP, or FSDP2 sharding with --fsdp), the log; then train():
     start_run (every check), build_model, restore (continue) or start, and the loop:
     evaluate, sample, checkpoint, the training step, log;
  8. entry points: --export, main().
"""

import argparse
import contextlib
import fcntl
import glob
import inspect
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

import hellaswag

GPT2_VOCAB = 50257  # tokens the GPT-2 tokenizer can produce; the model pads its vocab to 50304
EOT = 50256  # <|endoftext|>, which fineweb.py puts in front of every document


class UserError(Exception):
    """Bad input, or a state the user must fix: main() prints "error: ..." and exits with 1."""


# -----------------------------------------------------------------------------
# 1. The model


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence the model accepts
    vocab_size: int = 50304  # 50257 padded to a multiple of 64: faster matmuls, same model
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    arch: str = "gpt2"  # "gpt2": faithful GPT-2 | "modern": RoPE + SwiGLU + RMSNorm, no biases
    # | "speedrun": RoPE + QK-norm + ReLU^2, weight-free RMSNorm, untied head, soft-capped logits
    rope_base: float = 10000.0  # modern and speedrun
    logit_softcap: float | None = None  # speedrun: logits = cap * tanh(logits / cap); 0/None: off


# Published GPT-2 sizes: (n_layer, n_head, n_embd). All use block_size 1024.
MODEL_PRESETS = {"gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),  # 124M, 350M
                 "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600)}  # 774M, 1558M
ARCHS = ("gpt2", "modern", "speedrun")
RMS_EPS = 1e-6  # speedrun's norms (NanoChat's default in transformers)


def mlp_hidden_size(config):
    """GPT-2 and speedrun: 4x the width. SwiGLU has three matrices instead of two, so 2/3 of that
    keeps the parameter count (3*C*H ~= 8*C*C at H = 8C/3), rounded to a multiple of 64."""
    if config.arch != "modern":
        return 4 * config.n_embd
    return 64 * round(8 * config.n_embd / 3 / 64)


def rope_tables(seq_len, head_dim, base):
    """cos/sin of the rotary angles, (T, head_dim/2) each, in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def rms_norm(x):
    """Weight-free RMSNorm over the last dimension, computed in fp32 (as NanoChat's)."""
    return F.rms_norm(x.float(), (x.size(-1),), eps=RMS_EPS).type_as(x)


def apply_rope(x, cos, sin):
    """Rotate the channel pairs (i, i + hs/2) of x (B, nh, T, hs) by position-dependent angles."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        bias = config.arch == "gpt2"
        self.n_head, self.qk_norm = config.n_head, config.arch == "speedrun"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.c_proj.RESIDUAL_PROJECTION = True  # scaled down at init, see GPT._init_weights

    def forward(self, x, rope=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): the heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:
            cos, sin = rope[0][:T], rope[1][:T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.qk_norm:  # each head's q and k to unit RMS, after RoPE as in NanoChat
            q, k = rms_norm(q), rms_norm(k)
        # flash / memory-efficient attention; is_causal needs no mask buffer
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """GPT-2: Linear -> GELU (tanh) -> Linear. Modern: SwiGLU, silu(x W_gate) * (x W_up) -> down.
    Speedrun: Linear -> relu(h)^2 -> Linear."""

    def __init__(self, config):
        super().__init__()
        self.swiglu, self.relu2 = config.arch == "modern", config.arch == "speedrun"
        hidden = mlp_hidden_size(config)
        # for SwiGLU, the gate and up projections are one matmul of twice the width
        width = 2 * hidden if self.swiglu else hidden
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.arch == "gpt2")
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.arch == "gpt2")
        self.c_proj.RESIDUAL_PROJECTION = True

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.relu2:
            h = F.relu(h).square()
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2 used the tanh approximation
        return self.c_proj(h)


def make_norm(config):
    if config.arch == "gpt2":
        return nn.LayerNorm(config.n_embd)  # eps 1e-5 and a bias, as GPT-2
    if config.arch == "speedrun":
        return nn.RMSNorm(config.n_embd, eps=RMS_EPS, elementwise_affine=False)  # no weights
    return nn.RMSNorm(config.n_embd, eps=1e-5)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None):
        x = x + self.attn(self.ln_1(x), rope)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {config.arch!r}")
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.arch == "gpt2":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)  # learned positions
        modules["h"] = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        modules["ln_f"] = make_norm(config)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.tied = config.arch != "speedrun"
        if self.tied:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.activation_checkpointing = False  # --activation_checkpointing, see forward
        if config.arch != "gpt2":
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head,
                                   config.rope_base)
            # speedrun rotates the other way, as modded-nanogpt and NanoChat (same quality)
            sin = -sin if config.arch == "speedrun" else sin
            # not persistent: derived from the config, so checkpoints hold the weights only
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        if config.arch == "speedrun":  # modded-nanogpt's init: the embedding N(0, 1) (a norm
            # follows it), the residual projections and the head zero
            nn.init.normal_(self.transformer.wte.weight)
            for block in self.transformer.h:
                nn.init.zeros_(block.attn.c_proj.weight)
                nn.init.zeros_(block.mlp.c_proj.weight)
            nn.init.zeros_(self.lm_head.weight)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_PROJECTION", False):
                # each block adds two residual branches: keep the residual stream's variance flat
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameters counted once (a tied head is the token embedding); non_embedding leaves
        out the lookups, as the MFU formula wants: the position embedding, and the token
        embedding when the head is untied (a tied one is the head's matmul)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.tied:
            n -= self.transformer.wte.weight.numel()
        return n

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits (B, T, V), None); with targets (B, T), -1 = ignored: (None, loss).
        The logits are not returned with the loss: `_, loss = model(x, y)` would otherwise keep
        the last micro-step's logits (1.6 GB in bf16 at B=16) alive through the next forward."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.arch == "gpt2":
            x = x + self.transformer.wpe(torch.arange(T, device=idx.device))  # (T, C) broadcast
        else:
            rope = (self.rope_cos, self.rope_sin)
        if self.config.arch == "speedrun":
            x = self.transformer.ln_f(x)  # speedrun normalises the embedding too (no weights)
        for block in self.transformer.h:
            if self.activation_checkpointing and torch.is_grad_enabled():
                # keep only the block's input; its insides are recomputed in the backward:
                # ~1/7 of the blocks' activation memory at 12 layers, ~1/13 at 48 (by
                # memory_estimate: (2L + 34) / 34L), for ~1/3 more compute
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V), bf16 under autocast
        if cap := self.config.logit_softcap:  # in fp32, as modded-nanogpt
            logits = cap * torch.tanh(logits.float() / cap)
        if targets is None:
            return logits, None
        # the loss in fp32 whatever the autocast dtype; torch.compile fuses the upcast into its
        # loss kernels, so that no fp32 copy of the logits waits for the backward
        loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(-1),
                               ignore_index=-1)
        return None, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, top_k=50, generator=None):
        """Append max_new_tokens tokens to idx (B, T), sampled from the top_k most likely."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :].float()  # (B, V)
            logits[:, GPT2_VOCAB:] = float("-inf")  # padding ids are not real tokens
            kth = torch.topk(logits, top_k).values[:, -1:]  # (B, 1)
            probs = F.softmax(logits.masked_fill(logits < kth, float("-inf")), dim=-1)
            next_token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
        self.train(was_training)
        return idx


# --- export to Hugging Face transformers. GPT-2 keeps our names but stores these four weights
# as Conv1D, (in, out) where nn.Linear has (out, in). --arch modern is exactly Llama's
# architecture (RoPE rotating halves, SwiGLU, RMSNorm, no biases), --arch speedrun exactly
# NanoChat's (its RoPE direction, QK-norm after RoPE, ReLU^2, soft-cap), under other names.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LLAMA_NAMES = {"ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
               "attn.c_proj": "self_attn.o_proj", "mlp.c_proj": "mlp.down_proj"}
NANOCHAT_NAMES = {"attn.c_proj": "self_attn.o_proj", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def llama_state_dict(sd, config):
    """Our --arch modern weights under LlamaForCausalLM's names, speedrun's under
    NanoChatForCausalLM's (no norm weights, its own head); q/k/v and gate/up split."""
    speedrun = config.arch == "speedrun"
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"]}
    out |= {"lm_head.weight": sd["lm_head.weight"]} if speedrun else {
        "model.norm.weight": sd["transformer.ln_f.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].chunk(3)
        parts = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v}
        if not speedrun:
            parts["mlp.gate_proj"], parts["mlp.up_proj"] = sd[ours + "mlp.c_fc.weight"].chunk(2)
        names = NANOCHAT_NAMES if speedrun else LLAMA_NAMES
        parts |= {b: sd[f"{ours}{a}.weight"] for a, b in names.items()}
        out |= {f"{theirs}{name}.weight": w for name, w in parts.items()}
    return out


def export_to_transformers(model, out_dir):
    """A transformers folder (config, safetensors, GPT-2 tokenizer files; the vocab cut back to
    50257): GPT2LMHeadModel for --arch gpt2, LlamaForCausalLM for modern, NanoChatForCausalLM
    for speedrun. transformers
    pipelines, lm-evaluation-harness and hellaswag.py load it with AutoModelForCausalLM."""
    import transformers as tf

    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    for name in ("transformer.wte.weight", "lm_head.weight"):
        sd[name] = sd[name][:GPT2_VOCAB]
    common = dict(vocab_size=GPT2_VOCAB, bos_token_id=EOT, eos_token_id=EOT)
    if c.arch == "gpt2":
        hf = tf.GPT2LMHeadModel(tf.GPT2Config(
            n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
            activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            layer_norm_epsilon=1e-5, **common))
        weights = {k: v.t() if k.endswith(CONV1D) else v for k, v in sd.items()}
    elif c.arch == "speedrun":
        hf = tf.NanoChatForCausalLM(tf.NanoChatConfig(
            hidden_size=c.n_embd, intermediate_size=mlp_hidden_size(c), num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head, num_key_value_heads=c.n_head, hidden_act="relu2",
            max_position_embeddings=c.block_size, rms_norm_eps=RMS_EPS, pad_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
            final_logit_softcapping=c.logit_softcap or None, tie_word_embeddings=False, **common))
        weights = llama_state_dict(sd, c)
    else:
        hf = tf.LlamaForCausalLM(tf.LlamaConfig(
            hidden_size=c.n_embd, intermediate_size=mlp_hidden_size(c), num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head, num_key_value_heads=c.n_head, hidden_act="silu",
            max_position_embeddings=c.block_size, rms_norm_eps=1e-5, rope_theta=c.rope_base,
            tie_word_embeddings=True, **common))
        weights = llama_state_dict(sd, c)
    if model.tied:
        weights.pop("lm_head.weight", None)  # tied to the token embedding
    missing, unexpected = hf.load_state_dict({k: v.contiguous() for k, v in weights.items()},
                                             strict=False)
    if set(missing) - {"lm_head.weight"} or unexpected:
        raise RuntimeError(f"transformers' names differ: missing {missing}, extra {unexpected}")
    hf.tie_weights()
    hf.save_pretrained(out_dir)
    try:  # the tokenizer: the very files tiktoken's "gpt2" encoding is built from
        from tiktoken.load import read_file_cached

        base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
        for ours, theirs in (("vocab.json", "encoder.json"), ("merges.txt", "vocab.bpe")):
            with open(os.path.join(out_dir, ours), "wb") as f:
                f.write(read_file_cached(base + theirs))
        # which class reads them: Llama and NanoChat folders have no GPT-2 tokenizer of their own
        with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "GPT2Tokenizer"}, f)
    except Exception as e:  # the weights work with any GPT-2 tokenizer
        print(f"note: no tokenizer files written ({e}); use AutoTokenizer.from_pretrained('gpt2')")


# -----------------------------------------------------------------------------
# 2. The data


def find_shards(data_dir, split):
    """Sorted `<prefix>_{split}_NNNNNN.npy` paths (build-nanogpt: `edufineweb_train_000001.npy`)."""
    return sorted(glob.glob(os.path.join(data_dir, f"*{split}_[0-9][0-9][0-9][0-9][0-9][0-9].npy")))


class TokenStream:
    """Shards read as one long stream of uint16 tokens, memory-mapped: a 100M-token shard costs
    no RAM until it is read, and is never converted to int64 as a whole."""

    def __init__(self, paths):
        self.paths, self.arrays = list(paths), []
        for path in self.paths:
            try:
                arr = np.load(path, mmap_mode="r")
            except Exception as e:  # not a .npy file at all, a pickle, a truncated copy, ...
                raise UserError(f"{path} is not a readable .npy token shard ({type(e).__name__}); "
                                f"delete it and re-create the shards with fineweb.py") from None
            if arr.dtype != np.uint16 or arr.ndim != 1:
                raise UserError(f"shard {path} holds {arr.dtype} {arr.shape}, expected a 1-D "
                                f"uint16 array; re-create the shards with fineweb.py")
            self.arrays.append(arr)
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.total = int(self.lengths.sum())

    def read(self, order, starts, pos, n):
        """n tokens from position pos of the stream that concatenates the shards in `order`
        (starts[i] = the stream position where shard order[i] begins)."""
        out = np.empty(n, dtype=np.uint16)
        filled = 0
        i = int(np.searchsorted(starts, pos, side="right")) - 1
        while filled < n:
            arr = self.arrays[order[i]]
            offset = pos + filled - int(starts[i])
            take = min(n - filled, len(arr) - offset)
            out[filled:filled + take] = arr[offset:offset + take]
            filled += take
            i += 1
        return out

    def check_token_ids(self, rank, world_size, device):
        """Every token must be a GPT-2 id (< 50257): found at the start, not when a bad window is
        read hours into a run. Each rank scans a share of the shards (10B tokens: seconds)."""
        largest = torch.zeros(len(self.arrays), dtype=torch.int64, device=device)
        for i in range(rank, len(self.arrays), world_size):
            largest[i] = int(self.arrays[i].max(initial=0))
        for i, value in enumerate(all_reduce(largest, dist.ReduceOp.MAX).tolist()):
            if value >= GPT2_VOCAB:
                raise UserError(f"shard {self.paths[i]} holds token id {value}, not a GPT-2 token "
                                f"(< {GPT2_VOCAB}); re-create the shards with fineweb.py")


def to_batch(windows):
    """(B, T+1) uint16 windows -> inputs and targets, (B, T) int64 each and contiguous (a strided
    slice would reach the GPU through an unpinned temporary, see to_device)."""
    t = torch.from_numpy(windows.astype(np.int64))
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class TrainLoader:
    """Training sequences are windows of seq_len+1 tokens at stride seq_len over the stream of all
    train shards, so every token is a target exactly once per epoch and none is lost at a shard's
    end. With shuffle, each epoch concatenates the shards in a new seeded order and visits the
    windows in a new seeded order.

    A global sequence counter g runs across epochs; step s reads g in [s*S, (s+1)*S) with
    S = seqs_per_step = total_batch // seq_len. Which of those this rank reads depends on its
    rank, the micro-step and micro_batch, but the set does not: 1 GPU and 8 GPUs at the same total
    batch train on exactly the same data, and resuming at step s needs nothing but s."""

    def __init__(self, stream, seq_len, seed, shuffle, *, seqs_per_step, micro_batch, rank=0,
                 world_size=1):
        self.stream, self.seq_len, self.seed, self.shuffle = stream, seq_len, seed, shuffle
        self.seqs_per_step, self.micro_batch = seqs_per_step, micro_batch
        self.rank, self.world_size = rank, world_size
        self.n_windows = (stream.total - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"the train shards hold {stream.total} tokens, fewer than one "
                            f"sequence of {seq_len + 1}")
        self.plans = {}

    def epoch_plan(self, epoch):
        """(shard order, shard start positions, window order) of an epoch; the last two are
        kept (the sequences of one step can straddle the end of an epoch)."""
        if epoch not in self.plans:
            order, windows = np.arange(len(self.stream.arrays)), None
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                order, windows = rng.permutation(order), rng.permutation(self.n_windows)
            starts = np.concatenate([[0], np.cumsum(self.stream.lengths[order])[:-1]])
            self.plans = {e: p for e, p in self.plans.items() if e >= epoch - 1}
            self.plans[epoch] = (order, starts, windows)
        return self.plans[epoch]

    def window(self, g):
        """Global sequence g -> its seq_len+1 tokens (uint16)."""
        epoch, i = divmod(g, self.n_windows)
        order, starts, windows = self.epoch_plan(epoch)
        w = int(windows[i]) if windows is not None else i
        return self.stream.read(order, starts, w * self.seq_len, self.seq_len + 1)

    def batch(self, step, micro_step):
        """This rank's micro-batch of a step: x, y (micro_batch, seq_len) int64."""
        first = (step * self.seqs_per_step
                 + (micro_step * self.world_size + self.rank) * self.micro_batch)
        return to_batch(np.stack([self.window(g) for g in range(first, first + self.micro_batch)]))


class RandomTokens:
    """--benchmark's loader: random token ids in the real batch shape."""

    def __init__(self, seq_len, micro_batch, seed):
        self.shape, self.generator = (micro_batch, seq_len + 1), torch.Generator().manual_seed(seed)

    def batch(self, step, micro_step):
        return to_batch(torch.randint(0, GPT2_VOCAB, self.shape, generator=self.generator).numpy())


class ValSet:
    """The first val_tokens tokens of the val shard(s), as windows of seq_len+1 at stride seq_len:
    the same fixed set whatever the micro-batch or the number of GPUs."""

    def __init__(self, stream, seq_len, val_tokens):
        self.stream, self.seq_len = stream, seq_len
        self.n_windows = min(val_tokens, stream.total - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"the val shards hold {stream.total:,} tokens, fewer than one sequence "
                            f"of {seq_len + 1}; make a larger val shard or pass --val_every 0")
        self.order = np.arange(len(stream.arrays))
        self.starts = np.concatenate([[0], np.cumsum(stream.lengths)[:-1]])

    def windows(self, ids):
        return np.stack([self.stream.read(self.order, self.starts, k * self.seq_len,
                                          self.seq_len + 1) for k in ids])


# -----------------------------------------------------------------------------
# 3. The optimizer and the learning-rate schedule


def lr_factor(step, warmup_steps, max_steps, min_lr_ratio, schedule="cosine", cooldown_frac=0.0):
    """build-nanogpt's schedule as a multiple of the peak LR: a linear warmup to 1 over
    warmup_steps, then a cosine down to min_lr_ratio at max_steps (and flat after it).
    "wsd", warmup-stable-decay (arXiv:2405.18392): after the warmup flat at 1, then a straight
    line down to min_lr_ratio over the last cooldown_frac of the steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    if schedule == "wsd":
        left, cooldown = max_steps - step, cooldown_frac * max_steps
        return 1.0 if left >= cooldown else min_lr_ratio + (1 - min_lr_ratio) * left / cooldown
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


ADAMW = dict(betas=(0.9, 0.95), eps=1e-8)  # build-nanogpt's (the GPT-3 paper's) AdamW
# torch.optim.Muon with Keller Jordan's Nesterov momentum and 5 Newton-Schulz steps;
# "match_rms_adamw" scales each update to AdamW's typical RMS (Moonshot, arXiv:2502.16982), so
# AdamW-tuned LRs and weight decay carry over.
MUON = dict(nesterov=True, ns_steps=5, adjust_lr_fn="match_rms_adamw")
# --muon_lr defaults to this times --max_lr: on a 4-layer model on CPU, 2x and 4x beat 1x by
# ~0.02 val loss at two seeds (benchmarks/README.md); a first sign, not the 124M tuning
MUON_LR_MULTIPLE = 2.0


def muon_params(model):
    """What Muon trains: every 2-D weight inside the blocks. The embeddings (so the tied head)
    and the 1-D gains and biases stay with AdamW, as Muon's authors advise. The fused q/k/v matrix
    stays one (3C, C) matrix: splitting it gained 0.003-0.006 val loss on the shared corpus
    (benchmarks/README.md, AdamW vs Muon), a tenth of the seed-to-seed spread."""
    return [p for name, p in model.named_parameters()
            if name.startswith("transformer.h.") and p.dim() == 2]


def configure_optimizers(model, args, device_type):
    """-> (optimizers, their settings for config.json). AdamW decays only tensors of >= 2 dims
    (not biases and norm gains) and is fused on CUDA; with --optimizer muon the block matrices go
    to torch.optim.Muon instead. An untied head and its embedding get AdamW groups of their own
    (--head_lr, --embed_lr; default --max_lr). Every parameter is in exactly one group, and each
    group's "lr" is its peak LR."""
    hidden = muon_params(model) if args.optimizer == "muon" else []
    own = [] if model.tied else [(model.transformer.wte.weight, args.embed_lr),
                                 (model.lm_head.weight, args.head_lr)]
    apart = hidden + [p for p, _ in own]
    rest = [p for p in model.parameters() if all(p is not q for q in apart)]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": args.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]] + [{"params": [p], "lr": lr or args.max_lr,
                                                    "weight_decay": args.weight_decay}
                                                   for p, lr in own]
    optimizers = [torch.optim.AdamW(groups, lr=args.max_lr, fused=device_type == "cuda", **ADAMW)]
    settings = {"adamw": dict(lr=args.max_lr, **ADAMW, weight_decay=args.weight_decay,
                              params=sum(p.numel() for g in groups for p in g["params"]))}
    if own:
        settings["adamw"] |= dict(embed_lr=groups[-2]["lr"], head_lr=groups[-1]["lr"])
    if hidden:
        muon = MUON | ({"adjust_lr_fn": args.muon_adjust_lr} if args.muon_adjust_lr else {})
        optimizers.append(torch.optim.Muon(hidden, lr=args.muon_lr, momentum=args.muon_momentum,
                                           weight_decay=args.weight_decay, **muon))
        settings["muon"] = dict(lr=args.muon_lr, momentum=args.muon_momentum, **muon,
                                weight_decay=args.weight_decay,
                                params=sum(p.numel() for p in hidden))
    return optimizers, settings


def clip_grad_norm(model, max_norm, fsdp, device):
    """clip_grad_norm_ -> the total norm. Under --fsdp on CPU, of each whole gradient, gathered
    one at a time: the CPU's fp32 norm of a shard rounds otherwise (by 1e-4: a big tensor's tiny
    squares are lost against the running sum), and the clip factor, so the run, drifted from
    DDP's. On CUDA the shards' norms are combined as they are (one all-reduce; an all-gather
    per tensor would cost every step time): how close that is to DDP's norm there is for a GPU
    run to show."""
    if not fsdp or device.type != "cpu":
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        return norm.full_tensor() if fsdp else norm  # FSDP's is a distributed tensor
    params = [p for p in model.parameters() if p.grad is not None]
    total = torch.nn.utils.get_total_norm(
        [torch.nn.utils.get_total_norm([p.grad.full_tensor()]) for p in params])
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# -----------------------------------------------------------------------------
# 4. Checkpoints, and which one a run continues from

# A checkpoint continues a run only with these settings unchanged: they fix the model, the data
# order and the optimizer.
SAME_RUN = ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "logit_softcap",
            "seq_len", "total_batch", "seed", "shuffle", "optimizer")
# These shape the rest of the run: the same command refuses a change, --resume makes it on
# purpose, and config.json records it (step, old, new). data_dir: the tokens from that step on.
SCHEDULE = ("recipe", "max_steps", "warmup_steps", "lr_schedule", "cooldown_frac", "max_lr",
            "muon_lr", "embed_lr", "head_lr", "min_lr_ratio", "weight_decay", "grad_clip",
            "muon_momentum", "muon_adjust_lr", "data_dir")


def checkpoint_path(log_dir, step):
    return os.path.join(log_dir, f"model_{step:05d}.pt")


def checkpoint_step(path):
    """.../model_00025.pt -> 25; None for another name (model_00020.<time>.pt set aside)."""
    m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(str(path)))
    return int(m.group(1)) if m else None


def list_checkpoints(log_dir):
    """The paths of the checkpoints in log_dir, oldest first (not model_00020.<time>.pt)."""
    steps = ((checkpoint_step(p), p) for p in glob.glob(f"{log_dir}/model_*.pt"))
    return [path for step, path in sorted((s, p) for s, p in steps if s is not None)]


def atomic_write(path, content, tmp=None):
    """Write `content` (text, or a function that writes the file it is given) to tmp, fsync,
    rename, fsync the folder: a kill or a full disk never leaves a half-written `path` nor
    touches an earlier file. The temp name is fixed (path + ".tmp", or model.pt.tmp for all
    checkpoints), so a killed write's leftover is overwritten by the next one (a single run
    writes into a log dir: lock_log_dir)."""
    tmp = tmp or path + ".tmp"
    try:
        if callable(content):
            content(tmp)
        else:
            with open(tmp, "w") as f:
                f.write(content)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)  # make the rename itself durable
    os.fsync(fd)
    os.close(fd)


def read_checkpoint(path):
    """torch.load of one of our checkpoints, or a UserError that says what is wrong with it."""
    if not os.path.isfile(path):
        raise UserError(f"{path} is a directory, not a checkpoint file" if os.path.isdir(path)
                        else f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint (an interrupted copy?)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # text, a truncated file, somebody else's pickle, ...
        ckpt = None
    if not isinstance(ckpt, dict) or not {"model", "config", "step", "args"} <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint of train_gpt2.py, or it is damaged")
    return ckpt


def find_checkpoint(args, log):
    """-> (path, checkpoint) to continue from, or (None, None): the newest readable one in
    --log_dir, or --resume PATH, which the checkpoints after it record (args.timeline_from): the
    same command run again continues from the newest of those rather than go back to PATH."""
    found, (path, newest) = list_checkpoints(args.log_dir), (None, None)
    for path in reversed(found):
        try:
            newest = read_checkpoint(path)
            break
        except UserError as e:
            print(f"warning: skipping {e}", file=sys.stderr)
    if args.resume in (None, "latest"):
        if (found and newest is None) or (args.resume and not found):
            raise UserError(f"no readable checkpoint in {args.log_dir}; move them away to start "
                            f"afresh" if found else f"--resume: no checkpoint model_*.pt in "
                            f"{args.log_dir}; leave out --resume to start a new run")
        args.timeline_from = newest["args"].get("timeline_from") if newest else None
        return (path, newest) if newest else (None, None)
    try:
        ckpt = read_checkpoint(args.resume)
    except UserError as e:
        raise UserError(f"--resume: {e}") from None
    args.timeline_from = os.path.realpath(args.resume)
    if newest and newest["step"] > ckpt["step"] and \
            newest["args"].get("timeline_from") == args.timeline_from:
        log.print(f"note: {path} continues the run that --resume {args.resume} started: "
                  f"continuing from it (--resume PATH goes back to PATH only while it is newest)")
        return path, newest
    return args.resume, ckpt


def set_aside(moved, copied=()):
    """Keep files under the time the newest of `moved` was last written (log.txt ->
    log.20261202-134501.txt, model_00020.pt -> model_00020.20261202-134501.pt): `moved` renamed,
    `copied` copied (they are cut back next); no file is overwritten. -> the time stamp."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(max(map(os.path.getmtime, moved))))
    aside = {p: "{0}.{2}{1}".format(*os.path.splitext(p), stamp) for p in [*moved, *copied]}
    taken = [new for new in aside.values() if os.path.exists(new)]
    if taken:
        raise UserError(f"{taken[0]} exists: files were set aside at {stamp} already; move them "
                        f"away")
    for old, new in aside.items():
        (shutil.copyfile if old in copied else os.replace)(old, new)
    return stamp


def set_aside_other_timeline(log_dir, path, step):
    """Continuing from `path`, the checkpoints past its step belong to a timeline this run leaves:
    renamed model_00020.<time last written>.pt (not listed), never deleted, and the logs copied
    as log.<time>.txt before they are cut back. -> a note to print, or None."""
    steps = {p: checkpoint_step(p) for p in list_checkpoints(log_dir)}
    later = [p for p, s in steps.items() if s > step or s == step and not os.path.samefile(p, path)]
    if not later:
        return None
    logs = [os.path.join(log_dir, name) for name in ("log.txt", "samples.txt")]
    stamp = set_aside(later, copied=[p for p in logs if os.path.exists(p)])
    return (f"note: {len(later)} checkpoint(s) past step {step} belong to another timeline: "
            f"kept as model_*.{stamp}.pt, with its logs as *.{stamp}.txt")


def lr_jump(args, changes, step):
    """A note when --resume changed the LR at the step it continues from (old schedule -> new)."""
    old = vars(args) | {k: before for k, before, _ in changes}
    lrs = [a["max_lr"] * lr_factor(step, a["warmup_steps"], a["max_steps"], a["min_lr_ratio"],
                                   a["lr_schedule"], a["cooldown_frac"]) for a in (old, vars(args))]
    return f"note: the LR at step {step} jumps {lrs[0]:.4e} -> {lrs[1]:.4e} (the schedule " \
        f"changed)" if lrs[0] != lrs[1] else None


def compare_settings(args, model_config, ckpt, path):
    """-> the schedule changes [(name, old, new)] that --resume makes on purpose; a UserError
    listing the differences when the checkpoint cannot continue with these settings."""
    # checkpoints from before --lr_schedule were cosine
    theirs = {"lr_schedule": "cosine"} | ckpt["args"] | ckpt["config"]
    ours = vars(args) | asdict(model_config)
    real = lambda k, v: os.path.realpath(v) if k == "data_dir" and v else v  # noqa: E731
    differ = [(k, theirs.get(k), ours[k]) for k in SAME_RUN + SCHEDULE
              if real(k, theirs.get(k)) != real(k, ours[k])]  # a folder, however it is spelt
    fixed = [k for k, _, _ in differ if k in SAME_RUN]
    if fixed or (differ and not args.resume):
        listed = "; ".join(f"{k} {old} -> {new}" for k, old, new in differ)
        hint = "" if fixed else ", or add --resume to change them on purpose"
        raise UserError(f"{path} was written with other settings ({listed}); pass the same values "
                        f"to continue that run, or another --log_dir for a new run{hint}")
    return differ


def cut_back_log(path, step, keep_evals):
    """Keep the records of the steps before `step` (and those of `step` itself when its
    evaluations ran before its checkpoint), so that a continued run logs nothing twice."""
    if not os.path.exists(path):
        return

    def keep(line):  # log.txt's records, and samples.txt's "{step} sample{i} {json}"
        s, name, _ = parse_record(line) or (None, "", "")
        evals = name in EVAL_RECORDS or name.startswith("sample")
        return s is not None and (s < step or (s == step and keep_evals and evals))

    with open(path) as f:
        lines = f.read().split("\n")[:-1]  # a last line without "\n" was cut off by a kill
    kept = "".join(line + "\n" for line in lines if keep(line))
    atomic_write(path, kept)


LOCKED = {}  # log dir -> the open folder this process holds locked, until it exits


def check_folder(path, flag, device="cpu"):
    """Rank 0 makes the missing folders of --log_dir / --export_dir (and removes them again)
    before the work starts: a UserError on every rank if it cannot."""
    def try_making():
        missing, parent = [], os.path.abspath(path)
        while not os.path.lexists(parent):  # the folders to make, deepest first
            missing, parent = missing + [parent], os.path.dirname(parent)
        try:
            if not os.path.isdir(parent):
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder; pass another "
                                f"{flag}")
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise UserError(f"{flag} {path} cannot be made ({e.strerror}); pass a folder you can "
                            f"write to") from None
        finally:
            for folder in filter(os.path.isdir, missing):  # those it made
                os.rmdir(folder)
    rank0_tries(try_making, device, f"rank 0 cannot make {flag} {path}")


def lock_log_dir(log_dir):
    """Create --log_dir and lock it for as long as this process lives (the kernel drops the lock
    when the process dies, however it dies): two runs never write into one log dir."""
    os.makedirs(log_dir, exist_ok=True)
    key = os.path.realpath(log_dir)
    if key not in LOCKED:
        fd = os.open(log_dir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another run is writing to {log_dir}; wait for it to end, or pass "
                            f"another --log_dir") from None
        LOCKED[key] = fd


# -----------------------------------------------------------------------------
# 5. Evaluation

EVAL_RECORDS = ("val", "hella", "hella_acc")  # what the evaluations of a step write to log.txt
# Evaluations ask whether to stop every this many forward passes (HellaSwag's cadence too). Under
# DDP the check all-reduces a flag and reads it back: a host sync of ~1 ms against >= 40 ms for 8
# forwards of the 124M model even on an H100 (~2%), and a stop still lands within 8 forwards.
STOP_CHECK_EVERY = hellaswag.STOP_CHECK_EVERY


@torch.no_grad()
def evaluate_val(model, val_set, micro_batch, device, amp, rank=0, world_size=1,
                 should_stop=None):
    """Mean loss over every target token of the fixed val set, or None if should_stop() said
    so (it is called at the same slots on every rank: it may be a collective). The windows are
    dealt out round-robin and the sums all-reduced, so the result does not depend on the GPU
    count; a short last batch is padded with ignored targets, so that one graph serves."""
    was_training = model.training
    model.eval()
    my_ids = list(range(rank, val_set.n_windows, world_size))
    n_slots = math.ceil(math.ceil(val_set.n_windows / world_size) / micro_batch)  # every rank's
    sums = torch.zeros(2, dtype=torch.float32 if device.type == "mps" else torch.float64,
                       device=device)  # (loss sum, token count)
    try:
        for slot in range(n_slots):
            if should_stop is not None and slot % STOP_CHECK_EVERY == 0 and should_stop():
                return None
            ids = my_ids[slot * micro_batch:(slot + 1) * micro_batch]
            # a rank with nothing left runs a batch of ignored targets: under --fsdp every
            # forward is a collective
            x, y = to_batch(val_set.windows(ids or [0]))
            y = y if ids else torch.full_like(y, -1)
            pad = micro_batch - len(x)
            x = torch.cat([x, x[:1].expand(pad, -1)])
            y = torch.cat([y, torch.full((pad, y.size(1)), -1, dtype=y.dtype)])
            with amp:
                _, loss = model(to_device(x, device, True), to_device(y, device, True))
            if ids:
                n = len(ids) * y.size(1)
                sums += torch.stack([loss.to(sums.dtype) * n, sums.new_tensor(n)])
    finally:
        model.train(was_training)
    return (all_reduce(sums)[0] / sums[1]).item()


def generate_samples(model, enc, args, step, device, amp):
    """--num_samples continuations of --sample_prompt; a generator seeded per step makes them
    reproducible and disturbs nothing else."""
    generator = torch.Generator(device=device).manual_seed(args.seed + step)
    idx = torch.tensor(enc.encode(args.sample_prompt), device=device)[None]
    with amp:
        out = model.generate(idx.repeat(args.num_samples, 1), args.sample_tokens,
                             generator=generator)
    return [enc.decode([t for t in row.tolist() if t < GPT2_VOCAB]) for row in out]


def get_encoding():
    """tiktoken's GPT-2 BPE (downloaded once; offline it reads $TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); connect to "
                        f"the internet once, or set TIKTOKEN_CACHE_DIR to a folder holding its "
                        f"cached GPT-2 files") from None


# -----------------------------------------------------------------------------
# 6. The arguments


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line "error: ..." and exit code 1, as for all bad input
        raise UserError(f"{message} (see --help)")


def number(kind=int, low=0, high=math.inf, low_open=False):
    """An argparse type: a finite number >= low (> low when low_open) and <= high."""
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and (value > low if low_open else value >= low)
                and value <= high):
            bounds = f"{'>' if low_open else '>='} {low}"
            bounds += f" and <= {high}" if high < math.inf else ""
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" unless the help text already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, argparse.SUPPRESS, False):
            return action.help
        return super()._get_help_string(action)


# Per-arch defaults. gpt2: build-nanogpt's (the GPT-3 paper's 124M LR, a 375M-token warmup).
# modern: the seed's run (RoPE + SwiGLU + RMSNorm, 2 epochs: val 2.99, HellaSwag 0.32), which
# takes a 3x higher LR and a shorter warmup.
# speedrun: modern's, and modded-nanogpt's soft-cap of 15 (its record 18).
ARCH_DEFAULTS = {"gpt2": {"max_lr": 6e-4, "warmup_steps": 715},
                 "modern": {"max_lr": 1.8e-3, "warmup_steps": 285},
                 "speedrun": {"max_lr": 1.8e-3, "warmup_steps": 285, "logit_softcap": 15.0}}
# The defaults of the settings a recipe or an arch may change; a flag given explicitly wins.
DEFAULTS = dict(arch="gpt2", optimizer="adamw", lr_schedule="cosine", cooldown_frac=0.2,
                max_steps=19073, weight_decay=0.1, min_lr_ratio=0.1)
# --recipe fast: the modded-nanogpt 124M speedrun as of its record 8 (untied head, 3.2762 val
# loss on FineWeb after 4,578 steps of 524,288 tokens on 8xH100) with --arch speedrun's
# soft-cap: Muon at its LR and scaling, no weight decay, Adam LRs of its own for the embedding
# and the head, no warmup, a linear cooldown to zero over the last 1,308 of the 4,578 steps.
# Claimed elsewhere, not measured here; each value's source is in improvements_plan.md.
RECIPES = {"fast": dict(arch="speedrun", optimizer="muon", muon_lr=0.02, muon_adjust_lr="original",
                        weight_decay=0.0, embed_lr=0.3, head_lr=0.002, lr_schedule="wsd",
                        cooldown_frac=0.286, warmup_steps=0, min_lr_ratio=0.0, max_steps=4578)}
# Settings that mean something only with another one: name -> (setting, value).
NEEDS = {"muon_lr": ("optimizer", "muon"), "muon_adjust_lr": ("optimizer", "muon"),
         "embed_lr": ("arch", "speedrun"), "head_lr": ("arch", "speedrun"),
         "logit_softcap": ("arch", "speedrun"), "cooldown_frac": ("lr_schedule", "wsd")}
DTYPES = ("auto", "bf16", "fp16", "fp32")


def get_args(argv=None):
    p = ArgumentParser(description="Train GPT-2 on FineWeb-Edu shards (see README.md). Running "
                       "a command again continues its run.", formatter_class=HelpFormatter)
    a, pos, nonneg = p.add_argument, number(low=1), number()
    positive = number(float, 0, low_open=True)
    # an LR <= 1e30, far from float32's limit 3.4e38 (AdamW's step divides it by 1 - 0.9 and more)
    lr = number(float, 0, 1e30, low_open=True)
    a("--data_dir", default="edu_fineweb10B", help="folder of *_{val,train}_NNNNNN.npy shards "
      "(another one in the middle of a run: with --resume)")
    a("--log_dir", default="log", help="log.txt, config.json, samples.txt and checkpoints")
    a("--model", default="gpt2", choices=list(MODEL_PRESETS), help="GPT-2 size preset")
    a("--recipe", choices=list(RECIPES), help="fast: --arch speedrun, Muon, WSD and 2.4B tokens "
      "(see README.md and improvements_plan.md); explicit flags override its values")
    a("--arch", choices=ARCHS, help="modern: RoPE + SwiGLU + RMSNorm, no biases; speedrun: "
      "RoPE + QK-norm + ReLU^2, weight-free RMSNorm, untied head (default: gpt2)")
    a("--logit_softcap", type=number(float), help="speedrun: logits = c*tanh(logits/c), 0 = off "
      "(default: 15)")
    a("--n_layer", type=pos, help="layers (default: the preset's, 12 for gpt2)")
    a("--n_head", type=pos, help="attention heads (default: the preset's; speedrun: heads of 128)")
    a("--n_embd", type=pos, help="width (default: the preset's, 768 for gpt2)")
    a("--block_size", type=pos, default=1024, help="longest sequence the model takes")
    a("--vocab_size", type=number(low=GPT2_VOCAB), default=50304, help="embedding rows")
    a("--micro_batch", type=pos, default=16, help="sequences per forward pass per GPU")
    a("--seq_len", type=pos, default=1024, help="tokens per training sequence")
    a("--total_batch", type=pos, help="tokens per optimizer step over all GPUs (default: "
      "524288; with --benchmark one micro-batch per GPU)")
    a("--max_steps", type=pos, help="optimizer steps (default: 19073, x 524288 = 10B tokens; "
      "fast: 4578)")
    a("--warmup_steps", type=nonneg, help="LR warmup steps (default: 715 gpt2, 285 modern, "
      "speedrun; fast: 0)")
    a("--optimizer", choices=["adamw", "muon"], help="muon: torch.optim.Muon (torch >= 2.9) for "
      "the block matrices, AdamW for the rest (default: adamw)")
    a("--max_lr", type=lr, help="peak AdamW LR (default: 6e-4 gpt2, 1.8e-3 modern, "
      "speedrun)")
    a("--muon_lr", type=lr, help="peak Muon LR (default: 2 x --max_lr)")
    a("--muon_adjust_lr", choices=["match_rms_adamw", "original"], help="Muon's LR per matrix "
      "shape (torch's adjust_lr_fn; default: match_rms_adamw, fast: original)")
    a("--embed_lr", type=lr, help="speedrun: peak AdamW LR of the token embedding "
      "(default: --max_lr)")
    a("--head_lr", type=lr, help="speedrun: peak AdamW LR of the head (default: --max_lr)")
    a("--lr_schedule", choices=["cosine", "wsd"], help="cosine (build-nanogpt's) or wsd: flat, "
      "then linear to the floor (default: cosine)")
    a("--cooldown_frac", type=number(float, 0, 1), help="wsd: the LR falls over this last "
      "fraction of the steps (default: 0.2)")
    a("--muon_momentum", type=number(float, 0, 1), default=0.95, help="Muon's Nesterov momentum")
    a("--min_lr_ratio", type=number(float, 0, 1), help="final LR / peak LR (default: 0.1)")
    a("--weight_decay", type=number(float), help="decoupled weight decay (default: 0.1)")
    a("--grad_clip", type=number(float), default=1.0, help="max global grad norm; 0 = none")
    a("--seed", type=number(high=2**63 - 1), default=1337, help="model init and data order")
    a("--shuffle", type=int, default=1, choices=[0, 1], help="reshuffle shards and sequences "
      "every epoch")
    a("--val_every", type=nonneg, default=250, help="steps between validations (0 = off)")
    a("--val_tokens", type=pos, default=10485760, help="validate on the first this many tokens")
    a("--hellaswag_every", type=nonneg, default=250, help="steps between HellaSwag evals (0 = off)")
    a("--hellaswag_limit", type=pos, help="the first N HellaSwag examples only (default: all "
      "10,042); rows longer than the block keep their last block-size tokens")
    a("--hellaswag_batch", type=number(low=1, high=hellaswag.MAX_BATCH), help="HellaSwag examples "
      f"per forward, <= {hellaswag.MAX_BATCH} (default: 32 GPU, 8 CPU)")
    a("--sample_every", type=nonneg, default=250, help="steps between text samples (0 = off)")
    a("--sample_prompt", default="Hello, I'm a language model,", help="prompt of the samples")
    a("--num_samples", type=number(low=1, high=1000), default=4, help="samples each time, <= 1000")
    a("--sample_tokens", type=pos, default=32, help="tokens per sample")
    a("--checkpoint_every", type=nonneg, default=5000, help="steps between checkpoints (0 = the "
      "final one only)")
    a("--resume", nargs="?", const="latest", help="continue from the latest checkpoint in "
      "--log_dir (or from PATH, then from the newest checkpoint after it) even with other "
      "schedule settings (--max_lr, --max_steps, ...) or --data_dir; without it the same command "
      "continues a run only with the same settings")
    a("--compile", type=int, choices=[0, 1], help="torch.compile (default: 1 on CUDA, else 0)")
    a("--fsdp", type=int, default=0, choices=[0, 1], help="shard weights, gradients and optimizer "
      "states over the GPUs (FSDP2, under torchrun): for gpt2-large and -xl on 24 GB cards")
    a("--activation_checkpointing", type=int, default=0, choices=[0, 1], help="recompute each "
      "block's activations in the backward: far less memory, ~1/3 more compute")
    a("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    a("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on CUDA cards that have it, "
      "fp16 on older ones, fp32 on CPU/MPS (default: auto)")
    a("--peak_tflops", type=positive, help="the card's dense bf16 TFLOP/s, for MFU on other cards "
      "(default: known for H100/H200, A100, 4090, 3090)")
    a("--benchmark", action="store_true", help="train --steps steps on random tokens, write "
      "nothing, print one JSON line (tokens/s, MFU, peak memory)")
    a("--steps", type=pos, default=20, help="steps for --benchmark")
    a("--tensorboard", type=int, default=0, choices=[0, 1], help="also log to TensorBoard event "
      "files in <log_dir>/tensorboard (pip install tensorboard)")
    a("--wandb", metavar="PROJECT", help="also log to this Weights & Biases project (pip install "
      "wandb; WANDB_MODE=offline works); the run's id is kept in config.json")
    a("--wandb_run", metavar="NAME", help="the W&B run's name (default: W&B picks one)")
    a("--target_val_loss", type=positive, help="say when val loss first reaches this (default: "
      f"{GPT2_VAL_LOSS}, GPT-2 124M's, claimed on FineWeb-Edu data only)")
    a("--target_hellaswag", type=number(float, 0, 1), help="say when HellaSwag acc_norm first "
      f"reaches this (default: {GPT2_HELLASWAG}, GPT-2 124M's, on the full val set only)")
    a("--usd_per_hour", type=number(float), help="what the machine costs an hour: the ETA, the "
      "done line and the targets then give the cost")
    a("--export", metavar="CHECKPOINT", help="write a checkpoint as a transformers folder, exit")
    a("--export_dir", help="where --export writes (default: CHECKPOINT without .pt + _hf)")
    return p.parse_args(argv)


def model_config_from_args(args):
    n_layer, n_head, n_embd = MODEL_PRESETS[args.model]
    n_embd = args.n_embd or n_embd
    if args.arch == "speedrun" and n_embd % 128 == 0:
        n_head = n_embd // 128  # modded-nanogpt's heads of 128: 6 at width 768
    return GPTConfig(block_size=args.block_size, vocab_size=args.vocab_size, arch=args.arch,
                     n_layer=args.n_layer or n_layer, n_head=args.n_head or n_head,
                     n_embd=n_embd, logit_softcap=args.logit_softcap)


def resolve_defaults(args, world_size):
    """Fill in the defaults that depend on other arguments: an explicit flag wins over the
    recipe, the recipe over the arch's defaults, and those over DEFAULTS. A setting is filled
    in only where it means something (NEEDS)."""
    recipe = RECIPES.get(args.recipe, {})
    args.arch = args.arch or recipe.get("arch", DEFAULTS["arch"])
    for name, value in (DEFAULTS | ARCH_DEFAULTS[args.arch] | recipe).items():
        setting, needed = NEEDS.get(name, (None, None))
        if getattr(args, name) is None and (setting is None or getattr(args, setting) == needed):
            setattr(args, name, value)
    if args.muon_lr is None and args.optimizer == "muon":
        args.muon_lr = MUON_LR_MULTIPLE * args.max_lr
    if args.total_batch is None:
        one_micro_step = args.micro_batch * args.seq_len * world_size
        args.total_batch = one_micro_step if args.benchmark else 524288
    if args.benchmark:
        args.max_steps = args.steps


def micro_batch_options(args, world_size):
    """The --micro_batch values that divide --total_batch, as a phrase."""
    per_seq = args.seq_len * world_size
    options = [b for b in range(1, args.total_batch // per_seq + 1)
               if args.total_batch % (b * per_seq) == 0]
    return ", ".join(map(str, options)) or "none (change --total_batch)"


def validate_args(args, world_size):
    """The checks that involve several arguments (argparse checks each one), before any work."""
    c = model_config_from_args(args)
    if c.n_embd % c.n_head:
        raise UserError(f"--n_embd {c.n_embd} is not divisible by --n_head {c.n_head}")
    if c.arch != "gpt2" and (c.n_embd // c.n_head) % 2:
        raise UserError(f"--arch {c.arch} needs an even head size for RoPE; n_embd/n_head = "
                        f"{c.n_embd // c.n_head}")
    if args.seq_len > c.block_size:
        raise UserError(f"--seq_len {args.seq_len} is longer than the block size {c.block_size}")
    if args.val_every and args.val_tokens < args.seq_len:
        raise UserError(f"--val_tokens {args.val_tokens} is less than one sequence of --seq_len "
                        f"{args.seq_len} (or pass --val_every 0)")
    if args.sample_every and not args.sample_prompt:
        raise UserError("--sample_prompt is empty; give a prompt, or --sample_every 0")
    for name, (setting, value) in NEEDS.items():  # resolve_defaults fills these only if used
        if getattr(args, name) is not None and getattr(args, setting) != value:
            raise UserError(f"--{name} is used only with --{setting} {value}")
    if args.fsdp and "RANK" not in os.environ:
        raise UserError("--fsdp shards the model over the processes of a torchrun job; start it "
                        "with torchrun --nproc_per_node=N")
    if args.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        raise UserError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                        f"{torch.__version__}")
    if args.total_batch % (args.micro_batch * args.seq_len * world_size):
        raise UserError(f"--total_batch {args.total_batch} is not a multiple of micro_batch * "
                        f"seq_len * GPUs = {args.micro_batch}*{args.seq_len}*{world_size}; "
                        f"--micro_batch values that divide it: "
                        f"{micro_batch_options(args, world_size)}")
    for flag in ("tensorboard", "wandb"):  # optional packages: imported here when asked for
        try:
            if getattr(args, flag):
                __import__(flag)
        except ImportError:
            raise UserError(f"--{flag} needs the {flag} package: pip install {flag}") from None


# -----------------------------------------------------------------------------
# 7. The run


def choose_device(requested, local_rank):
    """--device -> a device string: "auto" picks cuda > mps > cpu, and a bare "cuda" is this
    process's GPU (LOCAL_RANK under torchrun), so `--device cuda` works with any GPU count."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else (
            "mps" if torch.backends.mps.is_available() else "cpu")
    return f"cuda:{local_rank}" if requested == "cuda" else requested


def resolve_device(requested, local_rank=0):
    """--device -> torch.device, or a UserError when this machine has no such device."""
    usage = "use auto, cpu, cuda, cuda:N or mps"
    try:
        device = torch.device(choose_device(requested, local_rank))
    except RuntimeError:
        raise UserError(f"--device {requested}: unknown device; {usage}") from None
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and not (device.index or 0) < n_cuda:
        raise UserError(f"--device {requested}: this machine has {n_cuda} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {requested}: MPS is not available here; use --device cpu")
    if device.type not in ("cuda", "mps", "cpu"):
        raise UserError(f"--device {requested}: not supported; {usage}")
    return device


def choose_dtype(requested, device):
    """auto: bf16 on CUDA cards with native bf16 (compute capability >= 8: A100, 30xx, 40xx,
    H100), fp16 with a GradScaler on older ones (V100, T4: torch.cuda.is_bf16_supported() says
    True there too, but their bf16 is emulated), fp32 on CPU and MPS."""
    if requested != "auto":
        return requested
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "fp32"


def autocast_ctx(device_type, dtype):
    """Mixed precision for bf16 / fp16: matmuls in half precision, weights and loss in fp32."""
    if dtype in ("bf16", "fp16"):
        half = torch.bfloat16 if dtype == "bf16" else torch.float16
        return torch.autocast(device_type=device_type, dtype=half)
    return contextlib.nullcontext()


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def synchronize(device):
    """Wait for the device's queued work, so that a wall-clock time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def to_device(t, device, static=False):
    """One host->device copy: on CUDA from pinned memory and non_blocking, so that it overlaps
    the GPU's work (t must be contiguous, or pinning copies it first); elsewhere a plain copy
    (non_blocking from unpinned memory on MPS has been seen to corrupt data,
    pytorch/pytorch#139550). static: a fixed batch shape for torch.compile, so the training and
    val graphs keep static shapes whatever HellaSwag's lengths did before them."""
    t = t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t.to(device)
    if static:
        torch._dynamo.mark_static(t)
    return t


def init_process_group(device, rank, world_size):
    backend = "nccl" if device.type == "cuda" else "gloo"
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return dist.init_process_group(backend)
    # torchrun's own key-value store outlives a --max-restarts restart, and torch reads it with
    # no prefix per attempt: a restarted rank could read a dead rank's address and fail (seen
    # here in 2 of 5 restarts; pytorch/pytorch#135712). A prefix per attempt keeps them apart.
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          is_master=False)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"attempt_{attempt}", store),
                            rank=rank, world_size=world_size)


def rank0_tries(fn, device, fallback):
    """Rank 0 runs fn(); a UserError it raises becomes every rank's UserError, raised together
    (a collective: every rank must call this), so that no rank is left waiting for another."""
    error = None
    if int(os.environ.get("RANK", 0)) == 0:
        try:
            fn()
        except UserError as e:
            error = str(e)
    if any_rank(error, device):
        raise UserError(error or fallback)


def same_on_every_rank(fn, found, fix):
    """fn() on every rank -> its result, once no rank raised a UserError and found(result) reads
    the same on all (a collective). On several machines a rank that alone fails or sees other
    files is one UserError on every rank naming it, not one silent exit and a hung collective."""
    try:
        result = fn()
        mine = [None, found(result), socket.gethostname()]
    except UserError as e:
        result, mine = None, [str(e), None, socket.gethostname()]
    every = [mine] * (dist.get_world_size() if dist.is_initialized() else 1)
    if dist.is_initialized():
        dist.all_gather_object(every, mine)  # every rank's [error or None, what it found, host]
    errors = {error for error, _, _ in every}
    if len(errors) == 1 and None not in errors:
        raise UserError(errors.pop())  # every rank alike: the error as one process says it
    for rank, (error, _, host) in enumerate(every):
        if error:
            raise UserError(f"{error} (rank {rank} on {host}; {fix})")
    if len({seen for _, seen, _ in every}) > 1:
        raise UserError("the ranks see different files: " + "; ".join(
            f"rank {rank} on {host}: {seen}" for rank, (_, seen, host) in enumerate(every))
            + f"; {fix}")
    return result


def all_reduce(t, op=dist.ReduceOp.SUM):
    if dist.is_initialized():
        dist.all_reduce(t, op=op)
    return t


# DDP's keyword for "no buffer broadcast before each forward": broadcast_buffers before torch
# 2.13, which deprecates it (with a FutureWarning) for forward_sync_buffers
DDP_NO_BUFFER_SYNC = {"forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
    nn.parallel.DistributedDataParallel).parameters else "broadcast_buffers": False}


def any_rank(flag, device):
    """True on every rank if it is true on any rank (a collective under torchrun): how one rank's
    failure or stop request becomes every rank's."""
    return bool(all_reduce(torch.tensor([float(bool(flag))], device=device), dist.ReduceOp.MAX))


def shard_model(model, dtype):
    """--fsdp (FSDP2): each block's weights, gradients and optimizer states are split over the
    GPUs and gathered (in bf16) only while that block runs; so is an untied head; then the rest
    (the embeddings, with a tied head, and the final norm) the same way. Gradients are reduced
    in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if dtype == "bf16" else None,
                                  reduce_dtype=torch.float32)
    for module in [*model.transformer.h] + ([] if model.tied else [model.lm_head]):
        fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def memory_estimate(config, args, n_params, n_muon, world_size):
    """(states, activations) per GPU in GiB, by arithmetic, not measured: fp32 weights and
    gradients (8 bytes a parameter) and the optimizer's moments (AdamW 8, Muon 4), split over the
    GPUs with --fsdp; activations ~34 bytes per token, layer and channel in bf16 (Korthikanti et
    al. 2022, with flash attention), with --activation_checkpointing only each block's 2-byte
    input and one block recomputed; and the logits (bf16, and fp32 for the loss). Speedrun
    keeps q and k before their norm (4 bytes per layer and channel) and its soft-capped fp32
    logits; n_params counts its untied head. Against
    build-nanogpt compiled on an H100 at micro-batch 16 / 32 / 64: 11.2 / 20.6 / 39.4 GiB
    here, 12.0 / 21.7 / 41.2 GiB measured."""
    states = (16 * n_params - 4 * n_muon) / (world_size if args.fsdp else 1)
    C, L = config.n_embd, config.n_layer
    per_layer = (38 if config.arch == "speedrun" else 34) * C
    per_token = (2 * L * C + per_layer) if args.activation_checkpointing else L * per_layer
    per_logit = 10 if config.logit_softcap else 6
    activations = args.micro_batch * args.seq_len * (per_token + per_logit * config.vocab_size)
    return states / 2**30, activations / 2**30


def check_cpu_memory(args, config, device, world_size):
    """On CPU, before the model is built: a run that memory_estimate() says cannot fit in this
    machine's RAM is refused (the estimate is low there: activations in fp32, not bf16)."""
    processes = os.environ.get("LOCAL_WORLD_SIZE", 1)
    # counted on meta models (no memory; any arch, an untied head included) of 1 and 2 layers:
    # building --n_layer 100000000 layers, even on meta, would take minutes and all the RAM
    with torch.device("meta"):
        one, two = (GPT(replace(config, n_layer=n)).num_params() for n in (1, 2))
    n_params = one + (config.n_layer - 1) * (two - one)
    need = sum(memory_estimate(config, args, n_params, 0, world_size)) * int(processes)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    if device.type == "cpu" and need > ram:
        raise UserError(f"this run needs ~{need:,.0f} GiB by estimate, more than the {ram:,.0f} "
                        f"GiB here: a smaller model, or --micro_batch "
                        f"{micro_batch_options(args, world_size)}")


# dense bf16 tensor-core peaks in FLOP/s, for MFU (matched against the device name)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "4090": 165e12, "3090": 71e12}


def peak_flops(name, override_tflops=None):
    if override_tflops:
        return override_tflops * 1e12
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def flops_per_token(model, seq_len):
    """6N + 12*L*H*Q*T: forward+backward matmul FLOPs per token (PaLM, appendix B), N without
    the lookups (the position embedding, an untied token embedding; any head is a matmul and
    counts), Q the head size, T the attended length."""
    c = model.config
    attention = 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * seq_len
    return 6 * model.num_params(non_embedding=True) + attention


def speed_figures(times, tokens_per_step, flops, peak, device, compiled, world_size=1):
    """--benchmark's figures from the wall time of each step: the median of the steps after the
    first third (compile and warm-up excluded); MFU against `peak` FLOP/s per device."""
    dt = statistics.median(times[max(1, len(times) // 3):] or times)
    tok_s = tokens_per_step / dt
    peak_mem = peak_memory_gib(device)
    return {"tokens_per_s": round(tok_s, 1), "step_ms": round(dt * 1000, 2),
            "mfu": round(flops * tok_s / (peak * world_size), 4) if peak else None,
            "peak_mem_gib": round(peak_mem, 3) if peak_mem else None,
            "compile_s": round(times[0] - dt, 2) if compiled else 0.0}


def peak_memory_gib(device):
    """The most memory torch has held on this GPU since the run began; None off CUDA."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def hms(seconds):
    """1h07m: hours and minutes, rounded to the minute (never "2h60m")."""
    h, m = divmod(round(seconds / 60), 60)
    return f"{h}h{m:02d}m"


def cost_text(seconds, usd_per_hour, before=" (", after=")"):
    """What `seconds` of the machine cost at --usd_per_hour, as " ($2.80)"; "" without a price."""
    return "" if usd_per_hour is None else f"{before}${seconds / 3600 * usd_per_hour:,.2f}{after}"


def tokens_text(n):
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n:,}"


def count_due(every, after, last):
    """How many steps in (after, last] run a task due every `every` steps (0: never) and once
    more at `last`: the evaluations still to come, for the ETA."""
    if after >= last:
        return 0
    return 1 if every <= 0 else last // every - after // every + (last % every != 0)


LOG_FORMATS = {"train": "{:.6f}", "val": "{:.4f}", "hella": "{:.4f}", "hella_acc": "{:.4f}",
               "lr": "{:.6e}", "norm": "{:.6f}", "dt": "{:.2f}", "tok/s": "{:.0f}",
               "mfu": "{:.4f}", "mem": "{:.2f}", "elapsed": "{:.1f}"}


class TensorBoardSink:
    """--tensorboard 1: event files in <log_dir>/tensorboard (`tensorboard --logdir LOG_DIR`)."""

    def __init__(self, args, config, start_step):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        # purge_step: TensorBoard hides the points at steps >= start_step written before, by a
        # killed run past its checkpoint (a timeline this run abandons); the earlier ones stand
        folder = f"{args.log_dir}/tensorboard"
        self.replay_from = start_step if os.path.isdir(folder) else 0  # see RunLog.begin
        self.writer = SummaryWriter(folder, purge_step=start_step)
        for summary in hparams({k: v if isinstance(v, (int, float, str)) else json.dumps(v)
                                for k, v in config.items()}, {"val": None, "hella": None}):
            self.writer.file_writer.add_summary(summary)  # the settings, in the HPARAMS tab
        self.close = self.writer.close

    def log(self, step, values, texts):
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        for i, text in enumerate(texts):
            self.writer.add_text(f"sample{i}", text, step)
        self.writer.flush()  # as log.txt is: a kill -9 loses nothing before its checkpoint


class WandbSink:
    """--wandb PROJECT: a Weights & Biases run, its id kept in config.json. wandb sends what it
    is given every ~15 s, so a kill -9 loses the last seconds, before the checkpoint too: a
    continued run rewinds the run to step 0 (wandb's resume_from; a killed run has logged step 0
    long before its first checkpoint) and logs log.txt's records again from step 1, which also
    drops the abandoned timeline past the checkpoint. WANDB_MODE=offline rewrites nothing on
    disk: each process writes an offline-run folder of its own, the continued one records the
    rewind, and the server applies it at `wandb sync` (oldest folder first)."""

    def __init__(self, args, config, start_step):
        import wandb

        self.wandb, run_id = wandb, config.get("wandb_run_id")
        rewind = {"resume_from": f"{run_id}?_step=0"} if run_id and start_step else {}
        self.replay_from = 1 if rewind else 0  # see RunLog.begin
        self.run = wandb.init(project=args.wandb, name=args.wandb_run, config=config,
                              dir=os.environ.get("WANDB_DIR") or args.log_dir, **rewind)
        config["wandb_run_id"], self.close = self.run.id, self.run.finish

    def log(self, step, values, texts):
        table = self.wandb.Table(columns=["sample"], data=[[t] for t in texts])
        self.run.log(values | ({"samples": table} if texts else {}), step=step)


class RunLog:
    """All a run writes but checkpoints, on rank 0 only: the console, log.txt, samples.txt and
    config.json, and the live views (--tensorboard, --wandb), which get log.txt's values.
    log_dir None: console only.

    The format of log.txt and samples.txt, written here and read by parse_record / read_log (the
    only reader: the write-up tool, the notebook, the benchmarks and the tests all use it): one
    record a line, build-nanogpt's "{step} {name} {value}" with `value` formatted by LOG_FORMATS
    (samples: "{step} sample{i} {json string}"). Lines are only appended, so a run killed
    mid-write leaves at most a last line without its newline; a continued run first cuts the
    file back to the step it continues from (cut_back_log), so no step is recorded twice."""

    def __init__(self, log_dir, master):
        self.dir, self.master = log_dir, master
        self.log_file, self.samples_file, self.config_file = (
            os.path.join(log_dir or "", n) for n in ("log.txt", "samples.txt", "config.json"))
        # config.json's dict (its "targets"); the training steps' time, evaluations excluded
        self.sinks, self.config, self.train_seconds, self.start_step = [], {}, 0.0, 0

    def print(self, *args, **kwargs):
        if self.master:
            print(*args, **kwargs, flush=True)

    def record(self, step, **values):
        if self.master and self.dir:
            texts = {name: LOG_FORMATS.get(name, "{}").format(v) for name, v in values.items()
                     if v is not None}
            with open(self.log_file, "a") as f:
                f.writelines(f"{step} {name} {text}\n" for name, text in texts.items())
            self.train_seconds += values.get("dt", 0) / 1000
            self.live(step, {name: float(text) for name, text in texts.items()})

    def samples(self, step, texts):
        if self.master and self.dir:
            with open(self.samples_file, "a") as f:
                f.writelines(f"{step} sample{i} {json.dumps(t)}\n" for i, t in enumerate(texts))
            self.live(step, {}, texts)

    def live(self, step, values, texts=(), sinks=None):
        """A step's values as log.txt holds them, or its samples, to the live views; then the
        targets."""
        if values or texts:
            for sink in self.sinks if sinks is None else sinks:
                sink.log(step, values, texts)
        if step >= self.start_step:
            self.check_targets(step, values)

    def check_targets(self, step, values):
        """The first time a target is reached: one line, and config.json records it (GPU-hours:
        world_size devices; on CPU, one per process)."""
        c, hours = self.config, self.train_seconds / 3600
        for t in c.get("targets", []):
            value = values.get(t["metric"])
            if value is None or not t["applies"] or t["reached"]:
                continue
            if value > t["target"] if t["metric"] == "val" else value < t["target"]:
                continue  # val loss: lower is better; HellaSwag: higher
            tokens, gpu_hours = step * c["tokens_per_step"], hours * c["world_size"]
            usd = None if c["usd_per_hour"] is None else round(hours * c["usd_per_hour"], 2)
            t["reached"] = dict(step=step, tokens=tokens, value=value, usd=usd,
                                train_hours=round(hours, 6), gpu_hours=round(gpu_hours, 6))
            self.print(f"target reached: {t['metric']} {value} (target {t['target']}) at step "
                       f"{step:,}, {tokens_text(tokens)} tokens, {hours:.2f} h of training "
                       f"(evaluations excluded), {gpu_hours:.2f} GPU-hours"
                       + cost_text(hours * 3600, c["usd_per_hour"], ", ", ""))
            self.write_config(c)

    def begin(self, args, config, start_step):
        """Once log.txt and samples.txt were cut back to start_step: the live views, given again
        what they lost of the records that stay, from their replay_from on (at least those of
        start_step: its evaluations ran before the checkpoint); then config.json."""
        if self.master and self.dir:
            log, samples = (read_log(p) if os.path.exists(p) else LogRecords([], [])
                            for p in (self.log_file, self.samples_file))
            if self.train_seconds is None:  # a checkpoint older than "train_seconds"
                self.train_seconds = sum(v for _, name, v in log.records if name == "dt") / 1000
            self.config, self.start_step, self.sinks = config, start_step, [
                sink(args, config, start_step) for flag, sink in (
                    (args.tensorboard, TensorBoardSink), (args.wandb, WandbSink)) if flag]
            steps = {}  # step -> (values, samples), samples.txt's lines being no numbers
            for step, name, value in log.records:
                steps.setdefault(step, ({}, []))[0][name] = value
            for step, _, text in map(parse_record, samples.unreadable):
                steps.setdefault(step, ({}, []))[1].append(json.loads(text))
            for step, (values, texts) in sorted(steps.items()):
                self.live(step, values, texts, [s for s in self.sinks if step >= s.replay_from])
        self.write_config(config)

    def close(self):
        for sink in self.sinks:
            sink.close()

    def write_config(self, config):
        if self.master and self.dir:
            text = json.dumps(config, indent=2) + "\n"
            atomic_write(self.config_file, text)

    def set_aside_old_logs(self):
        """A run that crashed before its first checkpoint: keep its files under the time they
        were last written (log.20261202-134501.txt) rather than append to them. -> that name."""
        old = [p for p in (self.log_file, self.samples_file, self.config_file) if os.path.exists(p)]
        return f"*.{set_aside(old)}.*" if old else None


def parse_record(line):
    """One log line -> (step, name, value text), or None for a line that is not a record."""
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) == 3 and parts[0].isdigit() and parts[1] and parts[2]:
        return int(parts[0]), parts[1], parts[2]
    return None


@dataclass
class LogRecords:
    records: list  # [(step, name, value)] in file order, every record (a step may repeat)
    unreadable: list  # the lines that are not records (a cut-off last line is not counted)

    def streams(self):
        """{name: [(step, value)] sorted by step}, the later record of a step winning."""
        out = {}
        for step, name, value in self.records:
            out.setdefault(name, {})[step] = value
        return {name: sorted(points.items()) for name, points in out.items()}


def read_log(path):
    """log.txt -> LogRecords with float values. A last line without its newline is still being
    written (or was cut off by a kill) and is left out without a word; any other line that is not
    "{step} {name} {number}" is listed in `unreadable`."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")[:-1]
    records, unreadable = [], []
    for line in lines:
        record = parse_record(line)
        try:
            records.append((record[0], record[1], float(record[2])))
        except (TypeError, ValueError):
            unreadable.append(line)
    return LogRecords(records, unreadable)


class StopRequest:
    """Ctrl-C or SIGTERM (a preemption, a `kill`) asks the loop to stop after the current step or
    evaluation, save a checkpoint and exit with 128 + the signal number, so that
    `train && next_step` does not go on. A second Ctrl-C aborts at once."""

    def __init__(self, log):
        self.log, self.signum = log, None
        signal.signal(signal.SIGINT, self.handler)
        signal.signal(signal.SIGTERM, self.handler)

    def handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.log.print(f"\nsignal {signum}: saving a checkpoint after this step, then exiting "
                       f"(Ctrl-C again to abort). Under torchrun this signal also means another "
                       f"rank died; then no checkpoint can follow, and the last one stands",
                       file=sys.stderr)


class NothingToDo(Exception):
    """The run is finished already: main() says so, changes nothing and exits with 0."""


def open_shards(args):
    """-> (train stream, val stream or None): the shards of --data_dir, each checked."""
    if not os.path.isdir(args.data_dir):
        raise UserError(f"data dir {args.data_dir} does not exist; run `python fineweb.py` first "
                        f"or pass --data_dir")
    train_paths, val_paths = find_shards(args.data_dir, "train"), find_shards(args.data_dir, "val")
    if not train_paths:
        raise UserError(f"no *_train_NNNNNN.npy shards in {args.data_dir}; run `python fineweb.py`"
                        f" (or `python fineweb.py --source FILES --local_dir {args.data_dir}`)")
    if args.val_every > 0 and not val_paths:
        raise UserError(f"no *_val_NNNNNN.npy shard in {args.data_dir}; make one with fineweb.py "
                        f"or pass --val_every 0")
    return TokenStream(train_paths), TokenStream(val_paths) if args.val_every else None


def load_data(args, rank, world_size, device, log):
    """-> (train loader, val set or None), after every check of the shards."""
    train, val = same_on_every_rank(
        lambda: open_shards(args),
        lambda found: ", ".join(f"{len(s.paths)} {name} shard(s) of {s.total:,} tokens"
                                for name, s in zip(("train", "val"), found) if s),
        f"every node needs the same shards in --data_dir {args.data_dir}")
    loader = TrainLoader(train, args.seq_len, args.seed, bool(args.shuffle),
                         seqs_per_step=args.total_batch // args.seq_len,
                         micro_batch=args.micro_batch, rank=rank, world_size=world_size)
    val_set = ValSet(val, args.seq_len, args.val_tokens) if val else None
    for stream in [train] + ([val_set.stream] if val_set else []):
        stream.check_token_ids(rank, world_size, device)
    if val_set and args.val_tokens > val_set.n_windows * args.seq_len + args.seq_len:
        log.print(f"warning: --val_tokens {args.val_tokens:,} is more than the val shards hold; "
                  f"validating on all {val_set.n_windows * args.seq_len:,} of their tokens")
    log.print(f"data: {len(train.paths)} train shards, {train.total:,} tokens "
              f"({loader.n_windows:,} sequences of {args.seq_len}); "
              f"{args.max_steps * args.total_batch / train.total:.2f} epochs planned")
    return loader, val_set


def load_hellaswag(args, block_size, log):
    if args.hellaswag_every == 0 or args.benchmark:
        return None
    try:
        examples = hellaswag.load_examples("val", limit=args.hellaswag_limit)
        cut = hellaswag.count_truncated(examples, block_size)
    except hellaswag.HellaSwagError as e:
        raise UserError(str(e)) from None
    if cut:
        log.print(f"hellaswag: {cut:,} of {len(examples):,} examples are longer than the block "
                  f"size {block_size}; their contexts are cut from the left")
    return examples


@dataclass
class Due:
    """The periodic tasks that run at a step, before its training step, in this order."""
    val: bool = False
    hella: bool = False
    samples: bool = False
    ckpt: bool = False


def task_every(args):
    """Steps between runs of each periodic task (0: never); --benchmark runs none of them."""
    every = {"val": args.val_every, "hella": args.hellaswag_every, "samples": args.sample_every,
             "ckpt": args.checkpoint_every}
    return dict.fromkeys(every, 0) if args.benchmark else every


@dataclass
class Run:
    """What the loop works with. raw_model is the module (checkpoints, samples, the optimizer);
    model is what the forward passes run: raw_model compiled, and under torchrun wrapped in DDP (a
    whole copy per GPU), unless --fsdp sharded raw_model itself over the GPUs."""
    args: argparse.Namespace
    rank: int
    world_size: int
    device: torch.device
    dtype: str  # resolved: bf16, fp16 or fp32
    amp: object  # autocast_ctx(): mixed precision, or nothing
    compiled: bool
    grad_accum: int  # micro-steps per step
    model_config: GPTConfig
    log: RunLog
    loader: object = None  # TrainLoader, or RandomTokens for --benchmark
    val_set: ValSet = None
    examples: list = None  # HellaSwag's, when it is evaluated
    enc: object = None  # tiktoken's GPT-2 encoding, for the samples
    raw_model: GPT = None
    model: nn.Module = None
    optimizers: list = None
    peak_lrs: list = None  # per optimizer, one per parameter group
    optimizer_settings: dict = None
    scaler: torch.amp.GradScaler = None  # fp16 only
    estimate: tuple = (0.0, 0.0)  # memory_estimate()
    flops: float = 0.0  # per token, and the card's peak FLOP/s (None: unknown), for MFU
    peak: float = None
    config: dict = None  # config.json as written at the start
    ckpt_path: str = None  # the checkpoint this run continues from, and the schedule changes
    changes: list = ()  # that --resume makes there
    start_step: int = 0
    evals_done: bool = False  # the evaluations of start_step ran before its checkpoint
    elapsed_before: float = 0.0  # seconds trained before this process started
    t_start: float = 0.0
    last_val: float = None
    last_hella: float = None
    task_seconds: dict = None  # how long each periodic task took the last time, for the ETA
    stop: StopRequest = None

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t_start

    def should_stop(self):
        """Did any rank get Ctrl-C or SIGTERM? A collective: every rank asks at the same points."""
        return any_rank(self.stop.signum is not None, self.device)

    def tasks_due(self, step):
        last = step == self.args.max_steps
        due = Due(**{task: n > 0 and (step % n == 0 or last)
                     for task, n in task_every(self.args).items()})
        due.samples &= step > 0
        due.ckpt = (due.ckpt or last) and not self.args.benchmark
        if step == self.start_step:  # the checkpoint we continue from holds this step's weights
            if self.evals_done:  # ... and its evaluations ran before it was written
                return Due()
            due.ckpt &= self.ckpt_path is not None
        return due


def start_run(args):
    """Processes, device and precision, then every check (arguments, the checkpoint to continue
    from, the data) before the model is built: -> (Run, that checkpoint or None)."""
    rank, local_rank = int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    resolve_defaults(args, world_size)
    validate_args(args, world_size)
    device = resolve_device(args.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left
    if "RANK" in os.environ:  # started by torchrun
        init_process_group(device, rank, world_size)
    compiled = bool(args.compile if args.compile is not None else device.type == "cuda")
    grad_accum = args.total_batch // (args.micro_batch * args.seq_len * world_size)
    dtype = choose_dtype(args.dtype, device)
    run = Run(args, rank, world_size, device, dtype, autocast_ctx(device.type, dtype), compiled,
              grad_accum, model_config_from_args(args),
              RunLog(None if args.benchmark else args.log_dir, rank == 0), task_seconds={})
    check_cpu_memory(args, run.model_config, device, world_size)
    if args.warmup_steps >= args.max_steps and not args.benchmark:
        run.log.print(f"warning: --warmup_steps {args.warmup_steps} >= --max_steps "
                      f"{args.max_steps}: the LR never reaches its peak", file=sys.stderr)
    ckpt = None
    if args.benchmark:
        run.loader = RandomTokens(args.seq_len, args.micro_batch, args.seed + rank)
    else:
        check_folder(args.log_dir, "--log_dir", device)
        run.ckpt_path, ckpt = same_on_every_rank(
            lambda: find_checkpoint(args, run.log),
            lambda found: f"{found[0]} (step {found[1]['step']})" if found[0] else "no checkpoint",
            "every node must see one --log_dir, at the same path (a shared disk)")
        if ckpt is not None:
            run.changes = compare_settings(args, run.model_config, ckpt, run.ckpt_path)
            if ckpt["step"] >= args.max_steps and ckpt["evals_done"]:
                raise NothingToDo(f"nothing to do: {run.ckpt_path} is step {ckpt['step']}, the "
                                  f"end of this run (--max_steps {args.max_steps})")
        run.loader, run.val_set = load_data(args, rank, world_size, device, run.log)
    run.examples = load_hellaswag(args, run.model_config.block_size, run.log)
    run.enc = get_encoding() if args.sample_every and not args.benchmark else None
    return run, ckpt


def build_model(run):
    """The model on its device (sharded with --fsdp, compiled, DDP-wrapped), its optimizers and
    the fp16 loss scaler; prints its size and the memory estimate."""
    args, device = run.args, run.device
    torch.manual_seed(args.seed)  # the same init on every rank (DDP broadcasts it anyway)
    run.raw_model = GPT(run.model_config).to(device)
    run.raw_model.activation_checkpointing = bool(args.activation_checkpointing)
    if args.fsdp:
        if run.dtype == "fp16":
            raise UserError("--fsdp needs bf16 or fp32 (this card would train in fp16); use "
                            "--dtype fp32, or leave out --fsdp")
        shard_model(run.raw_model, run.dtype)
    run.model = torch.compile(run.raw_model) if run.compiled else run.raw_model
    if dist.is_initialized() and not args.fsdp:
        # no buffers to broadcast before each forward (the RoPE tables derive from the config),
        # and the gradients as views into the all-reduce buckets: one copy of them less
        run.model = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True, **DDP_NO_BUFFER_SYNC)
    run.optimizers, run.optimizer_settings = configure_optimizers(run.raw_model, args,
                                                                  device.type)
    # each group's peak LR, as configured (before a checkpoint overwrites the groups' "lr")
    run.peak_lrs = [[group["lr"] for group in opt.param_groups] for opt in run.optimizers]
    run.scaler = torch.amp.GradScaler(device.type) if run.dtype == "fp16" else None
    n_params, head = run.raw_model.num_params(), run.raw_model.lm_head.weight.numel()
    head = "" if run.raw_model.tied else f" ({head:,} in the untied head)"
    run.log.print(f"model: {args.model} arch={args.arch} {n_params:,} parameters{head}, "
                  f"{run.dtype}, compile {run.compiled}, {run.world_size} process(es), "
                  f"{run.grad_accum} micro-steps per step")
    run.log.print("optimizer: " + "; ".join(
        f"{name} lr {s['lr']:g}" + (f" (embedding {s['embed_lr']:g}, head {s['head_lr']:g})"
                                    if "head_lr" in s else "") + f" on {s['params']:,} params"
        for name, s in run.optimizer_settings.items()))
    run.flops = flops_per_token(run.raw_model, args.seq_len)
    run.peak = peak_flops(device_name(device), args.peak_tflops)
    n_muon = run.optimizer_settings.get("muon", {}).get("params", 0)
    run.estimate = memory_estimate(run.model_config, args, n_params, n_muon, run.world_size)
    if device.type == "cuda":
        states, activations = run.estimate
        card = torch.cuda.get_device_properties(device).total_memory / 2**30
        run.log.print(f"memory estimate per GPU: {states + activations:.1f} GiB ({states:.1f} "
                      f"weights, gradients and optimizer, {activations:.1f} activations) of "
                      f"{card:.1f} GiB")
        if states + activations > 0.9 * card:  # the CUDA context, NCCL and fragmentation
            run.log.print("warning: this may not fit; " + ", ".join(
                ["--fsdp"] * (not args.fsdp and run.world_size > 1)
                + ["--activation_checkpointing 1"] * (not args.activation_checkpointing)
                + [f"a smaller --micro_batch ({micro_batch_options(args, run.world_size)})"]))


def full_state_dicts(**options):
    """torch's state-dict functions, set for full (unsharded) state dicts: checkpoints hold the
    whole model and the optimizer's state keyed by parameter name, so the same file continues a
    run with or without --fsdp. (Imported here: 0.5 s, which --export and the tests skip.)"""
    from torch.distributed.checkpoint import state_dict as dcp

    return dcp, dcp.StateDictOptions(full_state_dict=True, **options)


def restore(run, ckpt):
    """Continue: the checkpoint's weights, optimizer and scaler states, step and time."""
    dcp, full = full_state_dicts()
    dcp.set_model_state_dict(run.raw_model, ckpt["model"], options=full)
    dcp.set_optimizer_state_dict(run.raw_model, run.optimizers, ckpt["optimizer"], options=full)
    if run.scaler and ckpt["scaler"]:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.start_step, run.elapsed_before = ckpt["step"], ckpt["elapsed"]
    run.evals_done = ckpt["evals_done"]
    run.log.train_seconds = ckpt.get("train_seconds")  # None: an older one (RunLog.begin)


def open_log_dir(run):
    """Rank 0 locks --log_dir for as long as the run lives, cuts the logs back to the step it
    continues from (or sets aside an earlier run's logs that have no checkpoint) and writes
    config.json: the run's first writes; then the live views start."""
    log = run.log
    rank0_tries(lambda: lock_log_dir(run.args.log_dir), run.device, "rank 0 could not lock "
                "--log_dir")
    if run.rank == 0 and run.ckpt_path:
        notes = [set_aside_other_timeline(run.args.log_dir, run.ckpt_path, run.start_step),
                 lr_jump(run.args, run.changes, run.start_step)]
        for path in (log.log_file, log.samples_file):
            cut_back_log(path, run.start_step, keep_evals=run.evals_done)
        log.print(f"continuing from {run.ckpt_path} at step {run.start_step}"
                  + "".join(f"; {k} {old} -> {new}" for k, old, new in run.changes))
        for note in filter(None, notes):
            log.print(note)
    elif run.rank == 0 and (kept := log.set_aside_old_logs()):
        log.print(f"note: an earlier run left logs without checkpoints; kept as {kept}")
    run.config = run_config(run) if run.rank == 0 else {}
    log.begin(run.args, run.config, run.start_step)


def save_checkpoint(run, step, evals_done):
    """Rank 0 writes model_{step}.pt atomically; a failed write is every rank's error, and the
    earlier checkpoints stay as they were."""
    # gathered to rank 0 under --fsdp: a collective, every rank is here
    dcp, full = full_state_dicts(cpu_offload=True)
    state = {"model": dcp.get_model_state_dict(run.raw_model, options=full),
             "optimizer": dcp.get_optimizer_state_dict(run.raw_model, run.optimizers,
                                                       options=full),
             "scaler": run.scaler.state_dict() if run.scaler else None, "step": step,
             "evals_done": evals_done,  # the evaluations of `step` ran before this save
             "config": asdict(run.model_config), "args": dict(vars(run.args)),
             "elapsed": run.elapsed(), "val_loss": run.last_val,
             "train_seconds": run.log.train_seconds}
    path = checkpoint_path(run.args.log_dir, step)

    def write():
        try:
            atomic_write(path, lambda tmp: torch.save(state, tmp),
                         tmp=os.path.join(run.args.log_dir, "model.pt.tmp"))
        except (OSError, RuntimeError) as e:  # a full disk: "file write failed" or ENOSPC
            raise UserError(f"cannot write checkpoint {path} ({' '.join(str(e).split())[:160]}); "
                            f"the earlier checkpoints are intact: free some disk space and run "
                            f"the same command again") from None
    rank0_tries(write, run.device, "rank 0 could not write a checkpoint")
    run.log.print(f"saved checkpoint {path}")


@torch.no_grad()
def check_weights(run, step):
    """A finite loss says nothing of the update that followed it: one forward on the step's first
    micro-batch makes sure the weights still give a finite loss before they are evaluated,
    sampled from or saved."""
    x, y = run.loader.batch(step, 0)
    with run.amp:
        _, loss = run.raw_model(x.to(run.device), y.to(run.device))
    if any_rank(not math.isfinite(loss.item()), run.device):
        raise UserError(f"the weights diverged after step {step - 1} (loss {loss.item()} on a "
                        f"training batch); no checkpoint was written; {lower_lr_hint(run.args)}")


def lower_lr_hint(args):
    found = list_checkpoints(args.log_dir)
    return f"lower --max_lr and --resume {found[-1]}" if found else "lower --max_lr"


def train(args):
    """One run (or --benchmark): the setup, continue or start, then the loop. -> the exit code."""
    # ---- setup: every check first, then the model; nothing is written before the last check
    run, ckpt = start_run(args)
    build_model(run)
    if ckpt is not None:  # ---- continue where the checkpoint left off
        restore(run, ckpt)
        del ckpt  # a 124M checkpoint holds 1.5 GB of CPU tensors
    if not args.benchmark:
        open_log_dir(run)
    run.stop = StopRequest(run.log)
    model, raw_model, device, log, amp = run.model, run.raw_model, run.device, run.log, run.amp
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # ---- the loop: the evaluations of step s, then the training step s -> s+1, then its log
    run.t_start, step_times = time.time(), []
    for step in range(run.start_step, args.max_steps + 1):
        last_step = step == args.max_steps

        # -- evaluation: val loss, HellaSwag, samples, then the checkpoint, each when it is due
        due = run.tasks_due(step)
        if step > run.start_step and due != Due():
            check_weights(run, step)  # never evaluate, sample from or save diverged weights
        t0 = time.time()
        if due.val:
            run.last_val = evaluate_val(model, run.val_set, args.micro_batch, device, amp,
                                        run.rank, run.world_size, run.should_stop)
            if run.last_val is None:  # stopped: save this step; its evaluations run again later
                return stopped(run, step)
            run.task_seconds["val"], t0 = time.time() - t0, time.time()
            log.print(f"step {step:5d} | val loss {run.last_val:.4f}")
            log.record(step, val=run.last_val)
        if due.hella:
            result = hellaswag.evaluate(model, run.examples, device, autocast=amp,
                                        rank=run.rank, world_size=run.world_size,
                                        batch_size=args.hellaswag_batch,
                                        max_len=run.model_config.block_size,
                                        should_stop=run.should_stop)
            if result is None:
                return stopped(run, step)
            run.task_seconds["hella"], t0 = time.time() - t0, time.time()
            run.last_hella = result["acc_norm"]
            log.print(f"step {step:5d} | hellaswag {result['num_correct_norm']}/"
                      f"{result['examples']} acc_norm {run.last_hella:.4f} acc "
                      f"{result['acc']:.4f}")
            log.record(step, hella=run.last_hella, hella_acc=result["acc"])
        if due.samples and (run.rank == 0 or args.fsdp):  # one rank is enough, unless sharded
            texts = generate_samples(raw_model, run.enc, args, step, device, amp)
            run.task_seconds["samples"], t0 = time.time() - t0, time.time()
            for i, text in enumerate(texts):
                log.print(f"sample {i}: {text}")
            log.samples(step, texts)
        if due.ckpt:
            save_checkpoint(run, step, evals_done=True)
            run.task_seconds["ckpt"] = time.time() - t0
        if last_step:
            break

        # -- the training step: grad_accum micro-steps, one gradient all-reduce, clip, update
        t0 = time.time()
        model.train()
        for optimizer in run.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device)
        ddp = isinstance(model, nn.parallel.DistributedDataParallel)
        for micro_step in range(run.grad_accum):
            x, y = run.loader.batch(step, micro_step)
            x, y = to_device(x, device, static=True), to_device(y, device, static=True)
            # DDP must know BEFORE the forward whether this backward all-reduces the gradients:
            # only the last micro-step's does (build-nanogpt PR #30 fixed this ordering bug).
            # FSDP reduce-scatters every micro-step: else each GPU would hold whole gradients
            sync = micro_step == run.grad_accum - 1 or not ddp
            with contextlib.nullcontext() if sync else model.no_sync():
                with amp:
                    _, loss = model(x, y)
                loss = loss / run.grad_accum  # every micro-batch holds the same number of tokens
                loss_accum += loss.detach()
                (run.scaler.scale(loss) if run.scaler else loss).backward()
        all_reduce(loss_accum).div_(run.world_size)  # the mean over the ranks, for the log
        if run.scaler:
            for optimizer in run.optimizers:
                run.scaler.unscale_(optimizer)
        norm = clip_grad_norm(raw_model, args.grad_clip or math.inf, args.fsdp, device)
        factor = lr_factor(step, args.warmup_steps, args.max_steps, args.min_lr_ratio,
                           args.lr_schedule, args.cooldown_frac)
        for optimizer, peak_lrs in zip(run.optimizers, run.peak_lrs):
            for group, peak_lr in zip(optimizer.param_groups, peak_lrs):
                group["lr"] = peak_lr * factor
        loss_value, norm_value = torch.stack([loss_accum, norm.to(loss_accum)]).tolist()  # 1 sync
        if not math.isfinite(loss_value) or (not run.scaler and not math.isfinite(norm_value)):
            raise UserError(f"loss is {loss_value} (grad norm {norm_value}) at step {step}; the "
                            f"update was not applied, no checkpoint written; "
                            f"{lower_lr_hint(args)}")
        for optimizer in run.optimizers:
            run.scaler.step(optimizer) if run.scaler else optimizer.step()
        if run.scaler:
            run.scaler.update()
        synchronize(device)

        # -- logging
        step_times.append(time.time() - t0)
        log_step(run, step, loss_value, args.max_lr * factor, norm_value, step_times)
        if run.should_stop() and step + 1 < args.max_steps and not args.benchmark:
            check_weights(run, step + 1)
            return stopped(run, step + 1)

    return report_benchmark(run, step_times) if args.benchmark else finish(run)


def log_step(run, step, loss, lr, norm, step_times):
    """The step's console line (with the ETA) and its log.txt records."""
    args, dt = run.args, step_times[-1]
    tok_s = args.total_batch / dt
    mfu = run.flops * tok_s / (run.peak * run.world_size) if run.peak else None
    # the median: the first step of a process includes minutes of compiling
    every = task_every(args)
    eta = statistics.median(step_times[-20:]) * (args.max_steps - step - 1) + sum(
        s * count_due(every[task], step, args.max_steps) for task, s in run.task_seconds.items())
    run.log.print(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} "
                  f"| dt {dt * 1000:.0f}ms | tok/s {tok_s:,.0f}"
                  + (f" | mfu {mfu:.1%}" if mfu is not None else "") + f" | eta {hms(eta)}"
                  + cost_text(run.elapsed() + eta, args.usd_per_hour, " (", " in all)"))
    run.log.record(step, train=loss, lr=lr, norm=norm, dt=dt * 1000, **{"tok/s": tok_s}, mfu=mfu,
                   mem=peak_memory_gib(run.device), elapsed=run.elapsed())


def stopped(run, step):
    """A stop request: save `step` (its evaluations run again when the run continues), exit with
    128 + the signal."""
    save_checkpoint(run, step, evals_done=False)
    run.log.close()
    run.log.print(f"stopped at step {step}; run the same command again to continue")
    return 128 + run.stop.signum


def report_benchmark(run, step_times):
    """--benchmark's one JSON line."""
    args = run.args
    result = speed_figures(step_times, args.total_batch, run.flops, run.peak, run.device,
                           run.compiled, run.world_size)
    result |= dict(estimate_gib=round(sum(run.estimate), 2), gpu=device_name(run.device),
                   world_size=run.world_size, dtype=run.dtype, compile=run.compiled,
                   arch=args.arch, optimizer=args.optimizer, n_params=run.raw_model.num_params(),
                   micro_batch=args.micro_batch, seq_len=args.seq_len,
                   total_batch=args.total_batch, grad_accum=run.grad_accum, steps=args.steps,
                   torch=torch.__version__)
    run.log.print(json.dumps(result))
    return 0


def finish(run):
    """The end of the run: its last records, config.json's end time and the `done:` line."""
    args, log = run.args, run.log
    log.record(args.max_steps, elapsed=run.elapsed())
    log.write_config(run.config | {"ended_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    log.print(f"done: {args.max_steps:,} steps, {tokens_text(args.max_steps * args.total_batch)} "
              f"tokens in {hms(run.elapsed())}" + cost_text(run.elapsed(), args.usd_per_hour)
              + (f"; final val loss {run.last_val:.4f}" if run.last_val is not None else "")
              + (f"; HellaSwag acc_norm {run.last_hella:.4f}" if run.last_hella is not None
                 else "")
              + f"; last checkpoint {checkpoint_path(args.log_dir, args.max_steps)}")
    log.close()
    return 0


def run_config(run):
    """config.json: the arguments as resolved, what the run found (card, torch, data, commit),
    and its history (where it was continued from, which settings changed when)."""
    args, log = run.args, run.log
    previous = {}
    if run.ckpt_path and os.path.exists(log.config_file):
        with open(log.config_file) as f:
            previous = json.load(f)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10)
        commit = commit.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    skip = ("benchmark", "steps", "export", "export_dir", "resume", "argv")
    return {k: v for k, v in vars(args).items() if k not in skip} | dict(
        command=" ".join(["train_gpt2.py"] + args.argv), git_commit=commit,
        model_config=asdict(run.model_config), n_params=run.raw_model.num_params(),
        world_size=run.world_size, grad_accum_steps=run.grad_accum,
        device_name=device_name(run.device),
        n_gpus=run.world_size if run.device.type == "cuda" else 0, dtype_resolved=run.dtype,
        compile_resolved=run.compiled, torch_version=torch.__version__,
        optimizer_settings=run.optimizer_settings, tokens_per_step=args.total_batch,
        train_tokens=run.loader.stream.total,
        val_tokens_used=run.val_set.n_windows * args.seq_len if run.val_set else 0,
        started_at=previous.get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        resumed_from=previous.get("resumed_from", []) + ([run.ckpt_path] if run.ckpt_path
                                                         else []),
        setting_changes=previous.get("setting_changes", []) + [
            {"step": run.start_step, "setting": k, "old": old, "new": new}
            for k, old, new in run.changes],
        targets=run_targets(args, previous.get("targets", []), run.start_step),
        **{k: previous[k] for k in ["wandb_run_id"] if k in previous})


GPT2_VAL_LOSS = 3.2924  # GPT-2 124M (OpenAI's weights) on FineWeb-Edu's val shard (build-nanogpt)
GPT2_HELLASWAG = 0.2945  # its HellaSwag acc_norm on all 10,042 val examples


def is_fineweb_edu(data_dir):
    """fineweb.py's manifest.json names its input (files from --source get the hub's shard
    prefix too); shards without one are build-nanogpt's fineweb.py's if named edufineweb_*."""
    try:
        with open(os.path.join(data_dir, "manifest.json")) as f:
            return json.load(f)["settings"]["input"].get("path") == "HuggingFaceFW/fineweb-edu"
    except FileNotFoundError:
        return all(os.path.basename(p).startswith("edufineweb_")
                   for p in find_shards(data_dir, "train"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def run_targets(args, previous, start_step):
    """config.json's "targets": GPT-2 124M's scores (or --target_*), whether this run may claim
    each (else a note says why), and where each was first reached: kept across a resume, unless
    on the timeline past start_step that the resume abandons."""
    before, targets = {t["metric"]: t for t in previous}, []
    for metric, given, default, note in (
            ("val", args.target_val_loss, GPT2_VAL_LOSS, not is_fineweb_edu(args.data_dir) and
             f"the default val target is GPT-2's FineWeb-Edu score; this run's data is "
             f"{args.data_dir}, not FineWeb-Edu"),
            ("hella", args.target_hellaswag, GPT2_HELLASWAG, args.hellaswag_limit and
             f"GPT-2's score is on all 10,042 HellaSwag val examples; --hellaswag_limit "
             f"{args.hellaswag_limit} is a subset, not comparable")):
        target, note = (default, note or None) if given is None else (given, None)
        old = before.get(metric) or {"reached": None}
        keep = old["reached"] and old["reached"]["step"] < start_step and old["target"] == target
        targets.append(dict(metric=metric, target=target, applies=not note, note=note,
                            reached=old["reached"] if keep else None))
    return targets


# -----------------------------------------------------------------------------
# 8. Entry points


def export_checkpoint(path, out_dir):
    """--export: one of our checkpoints -> a transformers folder."""
    out_dir = os.path.splitext(path)[0] + "_hf" if out_dir is None else out_dir
    check_folder(out_dir, "--export_dir")
    ckpt = read_checkpoint(path)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    export_to_transformers(model, out_dir)
    kind = {"gpt2": "GPT2LMHeadModel", "modern": "LlamaForCausalLM",
            "speedrun": "NanoChatForCausalLM"}[model.config.arch]
    print(f"exported {path} to {out_dir}, a transformers {kind}: evaluate it with "
          f"`python hellaswag.py --model {out_dir}`")


def out_of_memory_error(args):
    """The one line for running out of memory (CUDA's or the CPU's), on whichever rank met it."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    device = resolve_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    card = device_name(device)
    if device.type == "cuda":
        card += f" ({torch.cuda.get_device_properties(device).total_memory / 2**30:.1f} GiB)"
    return (f"out of memory at --micro_batch {args.micro_batch} (--seq_len {args.seq_len}) on "
            f"{card}; --micro_batch values that divide --total_batch: "
            f"{micro_batch_options(args, world_size)} (for HellaSwag: a smaller --hellaswag_batch)")


def main(argv=None):
    """-> the exit code. A UserError is one line "error: ..." from rank 0 (the checks and the
    loop's failures are collective, so every rank raises it together) and exit code 1."""
    master = int(os.environ.get("RANK", 0)) == 0
    args = None
    try:
        args = get_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else map(str, argv))
        if args.export is not None:
            export_checkpoint(args.export, args.export_dir)
            return 0
        return train(args)
    except NothingToDo as e:
        if master:
            print(e)
        return 0
    except UserError as e:
        if master:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except (RuntimeError, MemoryError) as e:  # nothing was saved: the last checkpoint stands
        if not hellaswag.is_out_of_memory(e):  # CUDA's, numpy's or the CPU allocator's
            raise
        print(f"error: {out_of_memory_error(args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # atomic writes leave the last checkpoint whole
        if master:
            print("error: interrupted; run the same command again to continue from the last "
                  "checkpoint", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def exit_process(code):
    """The end of `python train_gpt2.py`. Under torchrun the process ends with os._exit, skipping
    Python's shutdown: a gloo worker thread (PyTorch's) may still be releasing the tensors of the
    last collective, which takes the interpreter's lock, and during shutdown that aborts the
    process ("terminate called without an active exception", SIGABRT) after a run that ended
    well; torchrun then reports it failed (~1 run in 50 on 2 busy CPU cores here). What the
    shutdown would have done for us is done first: a W&B run still open (one that ended in an
    error) is finished, and the output flushed. A rank other than 0 that fails waits a moment
    first: rank 0 prints the one error line for all, and torchrun stops every rank as soon as
    one exits with an error."""
    if "RANK" not in os.environ:
        sys.exit(code)
    if code and int(os.environ["RANK"]) != 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's stop ends the wait at once
        time.sleep(3)
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown(exit_code=code)  # what its atexit hook would do
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_process(main())
