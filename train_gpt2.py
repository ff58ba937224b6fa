"""
Train GPT-2 (124M and up) from scratch on FineWeb-Edu shards, on one device or many.

    python train_gpt2.py                                        # one GPU, CPU or MPS
    torchrun --standalone --nproc_per_node=4 train_gpt2.py      # 4 GPUs on one box

The file reads top to bottom:
  1. the model: GPTConfig, GPT (faithful GPT-2 or the "modern" RoPE/SwiGLU/RMSNorm variant),
     Hugging Face import/export and checkpoint loading,
  2. the data: memory-mapped uint16 shards, a seeded per-epoch shuffle, a fixed validation set,
  3. the training loop: AdamW + warmup/cosine schedule, gradient accumulation under DDP,
     periodic validation / HellaSwag / samples, atomic checkpoints and exact resume,
  4. small entry points: --benchmark (synthetic tokens/s) and --export (to transformers).
Importing this file has no side effects: everything that runs lives under `main()`.
"""

import argparse
import contextlib
import glob
import inspect
import json
import math
import os
import random
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

GPT2_VOCAB = 50257  # tokens the GPT-2 tokenizer can produce; the model pads its vocab to 50304
EOT = 50256  # <|endoftext|>, which fineweb.py puts in front of every document

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
    mlp_hidden: int = 0  # 0 = the default for the arch (4*n_embd, or the SwiGLU size below)
    rope_base: float = 10000.0  # modern only


# Published GPT-2 sizes: (n_layer, n_head, n_embd). All use block_size 1024.
MODEL_PRESETS = {
    "gpt2": (12, 12, 768),  # 124M
    "gpt2-medium": (24, 16, 1024),  # 350M
    "gpt2-large": (36, 20, 1280),  # 774M
    "gpt2-xl": (48, 25, 1600),  # 1558M
}
ARCHS = ("gpt2", "modern")


def swiglu_hidden(n_embd):
    """SwiGLU has three matrices instead of two, so 2/3 of GPT-2's 4x width keeps the
    parameter count: 3*C*H ~= 8*C*C at H = 8C/3, rounded to a multiple of 64 for the GPU."""
    return 64 * round(8 * n_embd / 3 / 64)


def mlp_hidden_size(config):
    if config.mlp_hidden:
        return config.mlp_hidden
    return 4 * config.n_embd if config.arch == "gpt2" else swiglu_hidden(config.n_embd)


def rope_tables(seq_len, head_dim, base):
    """cos/sin of the rotary angles, (T, head_dim/2) each, in fp32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate channel pairs (i, i + hs/2) of x (B, nh, T, hs) by position-dependent angles."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        bias = config.arch == "gpt2"
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.c_proj.RESIDUAL_PROJECTION = True  # scaled down at init, see GPT._init_weights

    def forward(self, x, rope=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs): heads become a batch dimension
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        # flash / memory-efficient attention; is_causal needs no mask buffer
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    """GPT-2: Linear -> GELU(tanh) -> Linear. Modern: SwiGLU, silu(x W_gate) * (x W_up) -> W_down."""

    def __init__(self, config):
        super().__init__()
        self.swiglu = config.arch == "modern"
        hidden = mlp_hidden_size(config)
        bias = not self.swiglu
        # for SwiGLU, gate and up projections are one matmul of twice the width
        self.c_fc = nn.Linear(config.n_embd, (2 if self.swiglu else 1) * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=bias)
        self.c_proj.RESIDUAL_PROJECTION = True

    def forward(self, x):
        h = self.c_fc(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2 used the tanh approximation
        return self.c_proj(h)


def make_norm(config):
    if config.arch == "gpt2":
        return nn.LayerNorm(config.n_embd)  # eps 1e-5 and a bias, as GPT-2
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


class FP32CrossEntropy(torch.autograd.Function):
    """Mean cross-entropy computed in fp32 from (N, V) logits of any dtype, ignoring target -1.

    F.cross_entropy(logits.float(), ...) keeps a full fp32 (N, V) tensor alive from the forward to
    the backward; at B=16, T=1024 that is 3.3 GB on top of the bf16 logits. Here only the logits
    themselves and one fp32 log-sum-exp per row are kept; the softmax is recomputed in backward,
    chunk by chunk, so fp32 temporaries never exceed one chunk."""

    CHUNK_ELEMENTS = 2**25  # 128 MB of fp32 per chunk

    @staticmethod
    def forward(ctx, logits, targets):
        N, V = logits.shape
        rows = max(1, FP32CrossEntropy.CHUNK_ELEMENTS // V)
        lse = torch.cat([torch.logsumexp(logits[i:i + rows].float(), dim=-1) for i in range(0, N, rows)])
        valid = targets != -1
        safe_targets = targets.masked_fill(~valid, 0)
        target_logits = logits.gather(1, safe_targets[:, None]).squeeze(1).float()  # (N,)
        n_valid = valid.sum().clamp(min=1)
        loss = ((lse - target_logits) * valid).sum() / n_valid
        ctx.save_for_backward(logits, safe_targets, valid, lse, n_valid)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, safe_targets, valid, lse, n_valid = ctx.saved_tensors
        N, V = logits.shape
        rows = max(1, FP32CrossEntropy.CHUNK_ELEMENTS // V)
        scale = (grad_loss / n_valid).float()
        grads = []
        for i in range(0, N, rows):
            probs = torch.exp(logits[i:i + rows].float() - lse[i:i + rows, None])  # softmax (n, V)
            # d loss / d logits = softmax - one_hot(target), scaled; zero for ignored rows
            probs.scatter_add_(1, safe_targets[i:i + rows, None], -torch.ones_like(probs[:, :1]))
            probs.mul_(valid[i:i + rows, None] * scale)
            grads.append(probs.to(logits.dtype))
        return torch.cat(grads), None


def cross_entropy_fp32(logits, targets):
    """logits (B, T, V), targets (B, T) with -1 = ignore -> scalar fp32 mean loss."""
    return FP32CrossEntropy.apply(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


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
        self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        if config.arch == "modern":
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head, config.rope_base)
            # not persistent: derived from the config, so checkpoints hold weights only
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "RESIDUAL_PROJECTION", False):
                # each block adds two residual branches; keep the residual stream's variance flat
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding=False):
        """Parameters counted once (the tied head is the token embedding).
        non_embedding=True leaves out the position embedding, as the MFU formula wants."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None):
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size {self.config.block_size}")
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.arch == "gpt2":
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
            x = x + self.transformer.wpe(pos)  # (T, C) broadcast over B
        else:
            rope = (self.rope_cos, self.rope_sin)
        for block in self.transformer.h:
            x = block(x, rope)
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, V), bf16 under autocast
        loss = cross_entropy_fp32(logits, targets) if targets is not None else None
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=50, generator=None):
        """Append max_new_tokens sampled tokens to idx (B, T). Runs this module eagerly, so it
        also works when called on a torch.compile'd wrapper (attribute access reaches us)."""
        was_training = self.training
        self.eval()
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size:])
            logits = logits[:, -1, :].float()  # (B, V)
            if logits.size(-1) > GPT2_VOCAB:
                logits[:, GPT2_VOCAB:] = float("-inf")  # padding ids are not real tokens
            if temperature <= 0:  # greedy
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                probs = F.softmax(logits, dim=-1)
                next_token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
            idx = torch.cat([idx, next_token], dim=1)
        self.train(was_training)
        return idx

    # --- Hugging Face interop (arch gpt2). transformers stores these four weights as Conv1D,
    # (in, out), where nn.Linear is (out, in): they are transposed on the way in and out.
    HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_pretrained(cls, name_or_dir):
        """OpenAI's GPT-2 ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl") from the HF hub, or
        any local transformers GPT2LMHeadModel directory. The vocab is kept at the checkpoint's
        size (no padding): padded logits would otherwise take probability mass."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        c = hf.config
        if c.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"{name_or_dir}: activation {c.activation_function} is not GPT-2's tanh GELU")
        if c.n_inner not in (None, 4 * c.n_embd):
            raise ValueError(f"{name_or_dir}: n_inner {c.n_inner} is not 4 * n_embd")
        config = GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer,
                           n_head=c.n_head, n_embd=c.n_embd, arch="gpt2")
        model = cls(config)
        hf_sd = hf.state_dict()
        ours = model.state_dict()
        with torch.no_grad():
            for key, tensor in ours.items():
                src = hf_sd.get(key)
                if src is None and key == "lm_head.weight":  # tied; some versions omit it
                    src = hf_sd["transformer.wte.weight"]
                if src is None:
                    raise ValueError(f"{name_or_dir}: no weight {key}")
                if key.endswith(cls.HF_TRANSPOSED):
                    src = src.t()
                tensor.copy_(src)
        return model.eval()

    def hf_state_dict(self, vocab_size=GPT2_VOCAB):
        """Our weights under transformers' names and layouts, vocab cut back to vocab_size."""
        sd = {}
        for key, tensor in self.state_dict().items():
            if key == "lm_head.weight":
                continue  # tied to transformer.wte.weight
            tensor = tensor.detach().float().cpu()
            if key.endswith(self.HF_TRANSPOSED):
                tensor = tensor.t()
            if key == "transformer.wte.weight":
                tensor = tensor[:vocab_size]
            sd[key] = tensor.contiguous()
        return sd

    def save_pretrained(self, out_dir):
        """Write a directory that transformers.GPT2LMHeadModel.from_pretrained loads (config.json +
        model.safetensors, vocab un-padded to 50257) plus the GPT-2 tokenizer files when tiktoken
        has them cached, so HF pipelines and lm-eval-harness can use our checkpoints."""
        if self.config.arch != "gpt2":
            raise ValueError("only arch 'gpt2' maps onto transformers' GPT2LMHeadModel")
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        vocab = min(c.vocab_size, GPT2_VOCAB)
        hf_config = GPT2Config(vocab_size=vocab, n_positions=c.block_size, n_embd=c.n_embd,
                               n_layer=c.n_layer, n_head=c.n_head, activation_function="gelu_new",
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                               layer_norm_epsilon=1e-5, bos_token_id=EOT, eos_token_id=EOT,
                               tie_word_embeddings=True)
        hf = GPT2LMHeadModel(hf_config)
        missing, unexpected = hf.load_state_dict(self.hf_state_dict(vocab), strict=False)
        missing = [k for k in missing if k != "lm_head.weight"]  # tied to wte
        if missing or unexpected:
            raise RuntimeError(f"weight names do not match transformers: missing {missing}, unexpected {unexpected}")
        hf.tie_weights()
        os.makedirs(out_dir, exist_ok=True)
        hf.save_pretrained(out_dir)
        write_gpt2_tokenizer_files(out_dir)
        return out_dir


def write_gpt2_tokenizer_files(out_dir):
    """vocab.json + merges.txt for transformers' GPT2Tokenizer. They are byte-for-byte the files
    tiktoken's "gpt2" encoding is built from, so take them from tiktoken's cache/download."""
    try:
        from tiktoken.load import read_file_cached

        base = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
        files = {"vocab.json": "encoder.json", "merges.txt": "vocab.bpe"}
        for ours, theirs in files.items():
            with open(os.path.join(out_dir, ours), "wb") as f:
                f.write(read_file_cached(base + theirs))
    except Exception as e:  # the weights are still usable with any GPT-2 tokenizer
        print(f"note: tokenizer files not written ({e}); load the tokenizer with from_pretrained('gpt2')")


def load_checkpoint_model(path, device="cpu"):
    """A GPT with the weights of one of our training checkpoints (log_dir/model_XXXXX.pt)."""
    ckpt = torch.load(path, map_location=device, weights_only=True)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


# -----------------------------------------------------------------------------
# 2. The data


class UserError(Exception):
    """Bad input or a state the user must fix: printed as one line, exit code 1."""


def find_shards(data_dir, split):
    """Sorted shard paths of one split: build-nanogpt's `edufineweb_{split}_NNNNNN.npy` names,
    or any `<prefix>_{split}_NNNNNN.npy`."""
    return sorted(glob.glob(os.path.join(data_dir, f"*{split}_[0-9][0-9][0-9][0-9][0-9][0-9].npy")))


class TokenStream:
    """Several uint16 shards read as one long token stream, memory-mapped (a 100M-token shard
    costs no RAM until read, and is never converted to int64 as a whole)."""

    def __init__(self, paths, vocab_size):
        self.paths, self.arrays = list(paths), []
        self.vocab_size = vocab_size
        for path in self.paths:
            try:
                arr = np.load(path, mmap_mode="r")
            except Exception as e:
                raise UserError(f"cannot read shard {path} ({e}); delete it and re-run fineweb.py")
            if arr.dtype != np.uint16 or arr.ndim != 1:
                raise UserError(f"shard {path} holds {arr.dtype} {arr.shape}, expected a 1-D uint16 array; "
                                f"re-create the shards with fineweb.py")
            self.arrays.append(arr)
        self.lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.total = int(self.lengths.sum())

    def read(self, order, starts, pos, n):
        """n tokens from position pos of the stream that concatenates shards in `order`
        (starts[i] = stream position where shard order[i] begins)."""
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
        if out.max(initial=0) >= self.vocab_size:
            bad = self.paths[order[i - 1]]
            raise UserError(f"token id {int(out.max())} >= vocab size {self.vocab_size} near shard {bad}; "
                            f"the shards were not made with the GPT-2 tokenizer (re-run fineweb.py)")
        return out


def to_batch(windows):
    """(B, T+1) uint16 windows -> inputs and targets, (B, T) int64 each."""
    t = torch.from_numpy(windows.astype(np.int64))
    return t[:, :-1], t[:, 1:]


class TrainLoader:
    """Training sequences are windows of seq_len+1 tokens at stride seq_len over the stream of all
    train shards, so every token is a target exactly once per epoch and nothing is lost at shard
    ends. With shuffle, each epoch concatenates the shards in a new seeded order and visits the
    windows in a new seeded order.

    The global sequence counter g runs across epochs; step s uses g in [s*S, (s+1)*S) with
    S = total_batch // seq_len sequences. Which of those a rank reads depends on rank, micro-step
    and micro_batch, but the set does not: 1 GPU and 8 GPUs at the same total batch train on
    exactly the same data, and resuming at step s needs nothing but s."""

    def __init__(self, stream, seq_len, seed, shuffle):
        self.stream, self.seq_len, self.seed, self.shuffle = stream, seq_len, seed, shuffle
        self.n_windows = (stream.total - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"train shards hold {stream.total} tokens, fewer than one sequence of {seq_len + 1}")
        self._plans = {}

    def epoch_plan(self, epoch):
        """(shard order, shard start positions, window order) of one epoch; the last two epochs
        are cached (a batch can straddle an epoch boundary)."""
        if epoch not in self._plans:
            n_shards = len(self.stream.arrays)
            if self.shuffle:
                rng = np.random.default_rng([self.seed, epoch])
                order = rng.permutation(n_shards)
                windows = rng.permutation(self.n_windows)
            else:
                order, windows = np.arange(n_shards), None
            starts = np.concatenate([[0], np.cumsum(self.stream.lengths[order])[:-1]])
            self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
            self._plans[epoch] = (order, starts, windows)
        return self._plans[epoch]

    def window(self, g):
        """Global sequence g -> seq_len+1 tokens (uint16)."""
        epoch, i = divmod(g, self.n_windows)
        order, starts, windows = self.epoch_plan(epoch)
        w = int(windows[i]) if windows is not None else i
        return self.stream.read(order, starts, w * self.seq_len, self.seq_len + 1)

    def sequence_ids(self, step, micro_step, rank, micro_batch, world_size, seqs_per_step):
        first = step * seqs_per_step + (micro_step * world_size + rank) * micro_batch
        return range(first, first + micro_batch)

    def batch(self, step, micro_step, rank, micro_batch, world_size, seqs_per_step):
        ids = self.sequence_ids(step, micro_step, rank, micro_batch, world_size, seqs_per_step)
        return to_batch(np.stack([self.window(g) for g in ids]))


class ValSet:
    """The first val_tokens tokens of the val shard(s), as windows of seq_len+1 at stride seq_len:
    the same fixed set whatever the micro-batch or the number of GPUs."""

    def __init__(self, stream, seq_len, val_tokens):
        self.stream, self.seq_len = stream, seq_len
        self.n_windows = min(val_tokens, stream.total - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"val shards hold {stream.total} tokens, fewer than one sequence of {seq_len + 1}")
        self.order = np.arange(len(stream.arrays))
        self.starts = np.concatenate([[0], np.cumsum(stream.lengths)[:-1]])

    def windows(self, ids):
        return np.stack([self.stream.read(self.order, self.starts, k * self.seq_len, self.seq_len + 1) for k in ids])


class SyntheticLoader:
    """Random tokens for --benchmark: the real loop without a data dir."""

    def __init__(self, vocab_size, seq_len, seed):
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, step, micro_step, rank, micro_batch, world_size, seqs_per_step):
        t = torch.randint(0, GPT2_VOCAB, (micro_batch, self.seq_len + 1), generator=self.generator)
        return t[:, :-1], t[:, 1:]


# -----------------------------------------------------------------------------
# 3. Training


def get_lr(step, max_lr, min_lr, warmup_steps, max_steps):
    """Linear warmup, then cosine decay to min_lr at max_steps (build-nanogpt's schedule)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def configure_optimizer(model, weight_decay, lr, device_type, log=print):
    """AdamW, betas (0.9, 0.95), eps 1e-8; weight decay only on matrices and embeddings
    (tensors with >= 2 dims), not on biases and norm gains; fused kernel on CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
    log(f"optimizer: {len(decay)} decayed tensors ({sum(p.numel() for p in decay):,} params), "
        f"{len(no_decay)} not decayed ({sum(p.numel() for p in no_decay):,}), fused AdamW: {fused}")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


# dense bf16 tensor-core peaks in FLOP/s, for MFU (matched against the device name)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "4090": 165e12, "3090": 71e12}


def flops_per_token(model, seq_len):
    """6N + 12*L*H*Q*T: forward+backward matmul FLOPs per token (PaLM appendix B), N without
    position embeddings, Q the head size, T the attended length."""
    c = model.config
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * seq_len


def peak_flops(device_name, override_tflops=None):
    if override_tflops:
        return override_tflops * 1e12
    for key, flops in PEAK_FLOPS.items():
        if key in device_name:
            return flops
    return None


def choose_device(requested, local_rank):
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return f"cuda:{local_rank}"
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def choose_dtype(requested, device_type):
    """auto: bf16 where supported, fp16 (with a GradScaler) on older CUDA cards, fp32 on CPU/MPS."""
    if requested != "auto":
        return requested
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def device_name(device_type, device):
    if device_type == "cuda":
        return torch.cuda.get_device_name(device)
    return device_type


class StopRequest:
    """Ctrl-C or SIGTERM (a preempted or `kill`ed job) asks the loop to stop after the current step
    and save a checkpoint, so nothing is lost. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def install(self):
        import signal

        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\nsignal {signum}: finishing this step, then saving a checkpoint (Ctrl-C again to abort)",
                  file=sys.stderr)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


class Dist:
    """Who we are in a torchrun job (or a single process)."""

    def __init__(self):
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.master = self.rank == 0

    def init(self, device):
        self.device = device
        if self.ddp:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    def all_reduce(self, tensor, op="sum"):
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.AVG if op == "avg" else dist.ReduceOp.SUM)
        return tensor

    def any(self, flag):
        """True on every rank if flag is True on any rank."""
        if not self.ddp:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self):
        if self.ddp:
            torch.distributed.barrier()

    def gather_objects(self, obj):
        if not self.ddp:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def destroy(self):
        if self.ddp:
            torch.distributed.destroy_process_group()


# --- checkpoints and logs


def checkpoint_path(log_dir, step):
    return os.path.join(log_dir, f"model_{step:05d}.pt")


def list_checkpoints(log_dir):
    """(step, path) of every checkpoint in log_dir, oldest first."""
    found = []
    for path in glob.glob(os.path.join(log_dir, "model_*.pt")):
        m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def atomic_write(path, write_fn):
    """write_fn(tmp_path), fsync, then rename: a crash never leaves a half-written `path`."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path, text):
    with open(path, "w") as f:
        f.write(text)


def rng_state():
    state = {"python": repr(random.getstate()), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    import ast

    random.setstate(ast.literal_eval(state["python"]))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load checkpoint {path} ({type(e).__name__}: {e})")


def resolve_resume(resume, log_dir):
    """--resume (latest complete checkpoint in log_dir) or --resume PATH -> (path, checkpoint)."""
    if resume != "latest":
        if not os.path.isfile(resume):
            raise UserError(f"--resume {resume}: no such checkpoint file")
        return resume, load_checkpoint(resume)
    found = list_checkpoints(log_dir)
    if not found:
        raise UserError(f"--resume: no checkpoint model_*.pt in {log_dir}; start without --resume")
    for step, path in reversed(found):  # newest first; skip any that cannot be read
        try:
            return path, torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            print(f"warning: skipping unreadable checkpoint {path} ({e})")
    raise UserError(f"--resume: no readable checkpoint in {log_dir}")


def truncate_log(path, step):
    """Keep only the records of steps before `step` (plus nothing half-written), so a resumed run
    never logs a step twice."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.read().split("\n")
    keep = []
    for line in lines:
        head = line.split(" ", 1)[0]
        if head.isdigit() and int(head) < step and " " in line:
            keep.append(line + "\n")

    atomic_write(path, lambda tmp: write_text(tmp, "".join(keep)))


# These arguments fix the model and the data order: resuming with other values would not
# continue the same run.
RESUME_MUST_MATCH = ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                     "seq_len", "total_batch", "seed", "shuffle")


# --- evaluation


def autocast_ctx(device_type, dtype):
    if dtype in ("bf16", "fp16"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_val(model, val_set, dist, micro_batch, device, amp):
    """Mean loss over every target token of the fixed val set. Windows are dealt out to ranks
    round-robin; sums and counts are all-reduced, so the result does not depend on the GPU count.
    A short last batch is padded with ignored targets so the shape (and compiled graph) is fixed."""
    was_training = model.training
    model.eval()
    my_ids = list(range(dist.rank, val_set.n_windows, dist.world_size))
    loss_sum = torch.zeros((), dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    count = torch.zeros_like(loss_sum)
    for i in range(0, len(my_ids), micro_batch):
        ids = my_ids[i:i + micro_batch]
        x, y = to_batch(val_set.windows(ids))
        n_pad = micro_batch - len(ids)
        if n_pad:
            x = torch.cat([x, x[:1].expand(n_pad, -1)])
            y = torch.cat([y, torch.full((n_pad, y.size(1)), -1, dtype=y.dtype)])
        x, y = x.to(device), y.to(device)
        with amp:
            _, loss = model(x, y)
        n = len(ids) * y.size(1)
        loss_sum += loss.double() * n if loss_sum.dtype == torch.float64 else loss * n
        count += n
    dist.all_reduce(loss_sum)
    dist.all_reduce(count)
    model.train(was_training)
    return (loss_sum / count).item()


def generate_samples(raw_model, enc, prompt, num_samples, max_new_tokens, seed, device, amp):
    """num_samples continuations of prompt; the generator is seeded per call, so the samples
    at a step are reproducible and never disturb the training RNG."""
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor(enc.encode(prompt), dtype=torch.long, device=device)[None].repeat(num_samples, 1)
    with amp:
        out = raw_model.generate(idx, max_new_tokens, top_k=50, generator=generator)
    return [enc.decode([t for t in row.tolist() if t < GPT2_VOCAB]) for row in out]


def get_encoding():
    """tiktoken's GPT-2 BPE (downloads once; offline it reads $TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); connect to the "
                        f"internet once or set TIKTOKEN_CACHE_DIR, or pass --sample_every 0")


# --- argument parsing


def get_args(argv=None):
    p = argparse.ArgumentParser(description="Train GPT-2 on FineWeb-Edu shards (see README.md).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data_dir", default="edu_fineweb10B", help="folder of *_val_NNNNNN.npy / *_train_NNNNNN.npy uint16 shards")
    a("--log_dir", default="log", help="log.txt, config.json, samples.txt and checkpoints go here")
    a("--model", default="gpt2", choices=list(MODEL_PRESETS), help="GPT-2 size preset")
    a("--arch", default="gpt2", choices=ARCHS, help="gpt2: faithful; modern: RoPE + SwiGLU + RMSNorm")
    a("--n_layer", type=int, default=None, help="override the preset")
    a("--n_head", type=int, default=None, help="override the preset")
    a("--n_embd", type=int, default=None, help="override the preset")
    a("--block_size", type=int, default=None, help="override the preset (1024)")
    a("--vocab_size", type=int, default=50304, help="embedding rows (GPT-2's 50257 padded to 50304)")
    a("--micro_batch", type=int, default=16, help="sequences per forward pass per GPU (16 fits a 24 GB card)")
    a("--seq_len", type=int, default=1024)
    a("--total_batch", type=int, default=None, help="tokens per optimizer step, all GPUs (default 524288)")
    a("--max_steps", type=int, default=19073, help="optimizer steps (19073 x 524288 = 10B tokens)")
    a("--warmup_steps", type=int, default=None, help="default: 715 for gpt2, 285 for modern")
    a("--max_lr", type=float, default=None, help="default: 6e-4 for gpt2, 1.8e-3 for modern")
    a("--min_lr_ratio", type=float, default=0.1, help="the cosine ends at max_lr * this")
    a("--weight_decay", type=float, default=0.1)
    a("--grad_clip", type=float, default=1.0, help="max global grad norm; 0 = no clipping")
    a("--seed", type=int, default=1337)
    a("--shuffle", type=int, default=1, choices=[0, 1], help="seeded new order of shards and sequences per epoch")
    a("--val_every", type=int, default=250, help="steps between validations (0 = off)")
    a("--val_tokens", type=int, default=10485760, help="validate on the first this many val tokens")
    a("--hellaswag_every", type=int, default=250, help="steps between HellaSwag evals (0 = off)")
    a("--hellaswag_limit", type=int, default=None, help="only the first N HellaSwag examples (quick runs)")
    a("--hellaswag_batch", type=int, default=None, help="HellaSwag examples per forward pass")
    a("--sample_every", type=int, default=250, help="steps between text samples (0 = off)")
    a("--sample_prompt", default="Hello, I'm a language model,")
    a("--num_samples", type=int, default=4)
    a("--sample_tokens", type=int, default=32)
    a("--checkpoint_every", type=int, default=5000, help="steps between checkpoints (0 = only the final one)")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue from the latest checkpoint in log_dir, or from the checkpoint PATH given")
    a("--compile", type=int, default=None, choices=[0, 1], help="torch.compile the model (default: 1 on CUDA)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    a("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    a("--peak_tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU on unlisted cards")
    a("--benchmark", action="store_true", help="train --steps steps on synthetic tokens and print a JSON line")
    a("--steps", type=int, default=20, help="steps for --benchmark")
    a("--export", metavar="CHECKPOINT", default=None, help="export a checkpoint to a transformers folder and exit")
    a("--export_dir", default=None, help="where --export writes (default: CHECKPOINT without .pt + _hf)")
    return p.parse_args(argv)


# Per-arch defaults. gpt2: build-nanogpt's (GPT-3 paper's 124M LR x1, 375M-token warmup).
# modern: the seed's 050226 run (RoPE + SwiGLU + RMSNorm, 2 epochs: val 2.99, HellaSwag 0.32),
# which tolerates a 3x higher LR and a shorter warmup.
ARCH_DEFAULTS = {"gpt2": {"max_lr": 6e-4, "warmup_steps": 715}, "modern": {"max_lr": 1.8e-3, "warmup_steps": 285}}


def resolve_arch_defaults(args):
    for name, value in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def model_config_from_args(args):
    n_layer, n_head, n_embd = MODEL_PRESETS[args.model]
    return GPTConfig(block_size=args.block_size or 1024, vocab_size=args.vocab_size,
                     n_layer=args.n_layer or n_layer, n_head=args.n_head or n_head,
                     n_embd=args.n_embd or n_embd, arch=args.arch)


def check_args(args, world_size):
    """Validate arithmetic between arguments; returns gradient accumulation steps."""
    if args.seq_len > (args.block_size or 1024):
        raise UserError(f"--seq_len {args.seq_len} is longer than the block size {args.block_size or 1024}")
    for name in ("micro_batch", "seq_len", "total_batch", "max_steps"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name} must be positive")
    if args.warmup_steps < 0:
        raise UserError("--warmup_steps must be >= 0")
    per_micro_step = args.micro_batch * args.seq_len * world_size
    if args.total_batch % per_micro_step:
        options = [b for b in range(1, args.total_batch // (args.seq_len * world_size) + 1)
                   if args.total_batch % (b * args.seq_len * world_size) == 0]
        raise UserError(f"--total_batch {args.total_batch} is not a multiple of micro_batch*seq_len*world = "
                        f"{args.micro_batch}*{args.seq_len}*{world_size}; --micro_batch values that divide it: "
                        f"{', '.join(map(str, options)) or 'none (change --total_batch)'}")
    return args.total_batch // per_micro_step


# --- the run


class Trainer:
    """Holds everything one run needs; main() builds it and calls run()."""

    def __init__(self, args, dist):
        self.args, self.dist = args, dist
        self.log = print if dist.master else (lambda *a, **k: None)
        self.device = torch.device(choose_device(args.device, dist.local_rank))
        self.device_type = self.device.type
        if self.device_type == "cuda":
            torch.cuda.set_device(self.device)
            torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left
        dist.init(self.device)
        self.dtype = choose_dtype(args.dtype, self.device_type)
        self.amp = autocast_ctx(self.device_type, self.dtype)
        self.compile = bool(args.compile if args.compile is not None else self.device_type == "cuda")
        self.grad_accum = check_args(args, dist.world_size)
        self.seqs_per_step = args.total_batch // args.seq_len
        self.model_config = model_config_from_args(args)
        if not args.benchmark:  # fail fast on a bad log dir or bad data, before building the model
            self.resume_path, self.ckpt = self.prepare_log_dir()
            self.loader, self.val_set = self.load_data()

        torch.manual_seed(args.seed)  # identical init on every rank (DDP also broadcasts)
        self.raw_model = GPT(self.model_config).to(self.device)
        self.n_params = self.raw_model.num_params()
        self.log(f"model: {args.model} arch={args.arch} {self.n_params:,} parameters")
        self.model = torch.compile(self.raw_model) if self.compile else self.raw_model
        self.train_model = self.model
        if dist.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device_type == "cuda" else None
            self.train_model = DDP(self.model, device_ids=ids)
        self.optimizer = configure_optimizer(self.raw_model, args.weight_decay, args.max_lr, self.device_type, self.log)
        self.scaler = torch.amp.GradScaler(self.device_type) if self.dtype == "fp16" else None
        self.flops_per_token = flops_per_token(self.raw_model, args.seq_len)
        self.device_name = device_name(self.device_type, self.device)
        self.peak = peak_flops(self.device_name, args.peak_tflops)

    # one optimizer step: grad_accum micro-steps, one all-reduce, clip, update
    def train_step(self, loader, step):
        args, dist = self.args, self.dist
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=self.device)
        for micro_step in range(self.grad_accum):
            x, y = loader.batch(step, micro_step, dist.rank, args.micro_batch, dist.world_size, self.seqs_per_step)
            if self.device_type == "cuda":
                x, y = x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
            else:
                x, y = x.to(self.device), y.to(self.device)
            # DDP must know BEFORE the forward whether this backward all-reduces; only the last
            # micro-step does (build-nanogpt PR #30 fixed the same ordering bug)
            last = micro_step == self.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not dist.ddp) else self.train_model.no_sync()
            with sync:
                with self.amp:
                    _, loss = self.train_model(x, y)
                loss = loss / self.grad_accum  # each micro-batch has the same number of tokens
                loss_accum += loss.detach()
                (self.scaler.scale(loss) if self.scaler else loss).backward()
        dist.all_reduce(loss_accum, op="avg")
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        clip = args.grad_clip if args.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        lr = get_lr(step, args.max_lr, args.max_lr * args.min_lr_ratio, args.warmup_steps, args.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_value, norm_value = loss_accum.item(), norm.item()
        if not math.isfinite(loss_value) or (not self.scaler and not math.isfinite(norm_value)):
            return loss_value, norm_value, lr, False  # do not apply a poisoned update
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss_value, norm_value, lr, True

    def synchronize(self):
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        elif self.device_type == "mps":
            torch.mps.synchronize()

    def run_benchmark(self):
        """--benchmark: --steps steps of the real train_step on random tokens; median tokens/s of
        the steps after the first third (compile and warm-up excluded)."""
        args = self.args
        loader = SyntheticLoader(self.model_config.vocab_size, args.seq_len, args.seed)
        if self.device_type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for step in range(args.steps):
            self.synchronize()
            t0 = time.perf_counter()
            loss, norm, lr, ok = self.train_step(loader, step)
            self.synchronize()
            times.append(time.perf_counter() - t0)
            self.log(f"bench step {step}: loss {loss:.4f} dt {times[-1] * 1000:.0f} ms")
        steady = times[max(1, len(times) // 3):] or times
        dt = statistics.median(steady)
        tok_s = args.total_batch / dt
        result = {
            "tokens_per_s": round(tok_s, 1),
            "mfu": round(self.flops_per_token * tok_s / (self.peak * self.dist.world_size), 4) if self.peak else None,
            "step_ms": round(dt * 1000, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3) if self.device_type == "cuda" else None,
            "compile_s": round(times[0] - dt, 2) if self.compile else 0.0,
            "gpu": self.device_name, "world_size": self.dist.world_size, "dtype": self.dtype,
            "compile": self.compile, "arch": args.arch, "n_params": self.n_params,
            "micro_batch": args.micro_batch, "seq_len": args.seq_len, "total_batch": args.total_batch,
            "grad_accum": self.grad_accum, "steps": args.steps, "torch": torch.__version__,
        }
        if self.dist.master:
            print(json.dumps(result))
        return result

    # --- the real run
    def prepare_log_dir(self):
        """A fresh run never overwrites checkpoints; --resume finds its checkpoint and cuts the
        logs back to it. Returns the checkpoint dict to resume from (or None)."""
        args = self.args
        os.makedirs(args.log_dir, exist_ok=True)
        self.log_file = os.path.join(args.log_dir, "log.txt")
        self.samples_file = os.path.join(args.log_dir, "samples.txt")
        if args.resume is None:
            if list_checkpoints(args.log_dir):
                raise UserError(f"{args.log_dir} already holds checkpoints; use --resume to continue that run "
                                f"or another --log_dir for a new one")
            return None, None
        path, ckpt = resolve_resume(args.resume, args.log_dir)
        saved = ckpt.get("args", {})
        cfg = asdict(self.model_config) | {"seq_len": args.seq_len, "total_batch": args.total_batch,
                                           "seed": args.seed, "shuffle": args.shuffle}
        theirs = dict(ckpt["config"]) | {k: saved.get(k) for k in ("seq_len", "total_batch", "seed", "shuffle")}
        diff = [f"{k} {theirs.get(k)} -> {cfg[k]}" for k in RESUME_MUST_MATCH if theirs.get(k) != cfg[k]]
        if diff:
            raise UserError(f"--resume: {path} was trained with other settings ({'; '.join(diff)}); "
                            f"pass the same values to continue it")
        return path, ckpt

    def write_config(self, resumed_from, train_tokens, val_tokens):
        args = self.args
        config = dict(vars(args))
        previous = {}
        path = os.path.join(args.log_dir, "config.json")
        if resumed_from and os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
        config.update(
            model_config=asdict(self.model_config), n_params=self.n_params, world_size=self.dist.world_size,
            grad_accum_steps=self.grad_accum, device_name=self.device_name,
            n_gpus=self.dist.world_size if self.device_type == "cuda" else 0, dtype_resolved=self.dtype,
            compile_resolved=self.compile, torch_version=torch.__version__,
            started_at=previous.get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            tokens_per_step=args.total_batch, train_tokens=train_tokens, val_tokens_used=val_tokens,
            resumed_from=previous.get("resumed_from", []) + ([resumed_from] if resumed_from else []),
        )
        self.log("config:\n" + json.dumps(config, indent=2))
        if self.dist.master:
            atomic_write(path, lambda tmp: write_text(tmp, json.dumps(config, indent=2) + "\n"))

    def load_data(self):
        args = self.args
        if not os.path.isdir(args.data_dir):
            raise UserError(f"data dir {args.data_dir} does not exist; run `python fineweb.py` first or pass --data_dir")
        train_paths, val_paths = find_shards(args.data_dir, "train"), find_shards(args.data_dir, "val")
        if not train_paths:
            raise UserError(f"no *_train_NNNNNN.npy shards in {args.data_dir}; run `python fineweb.py` "
                            f"(or `python fineweb.py --source FILES --local_dir {args.data_dir}`)")
        vocab = self.model_config.vocab_size
        loader = TrainLoader(TokenStream(train_paths, vocab), args.seq_len, args.seed, bool(args.shuffle))
        val_set = None
        if args.val_every > 0:
            if not val_paths:
                raise UserError(f"no *_val_NNNNNN.npy shard in {args.data_dir}; make one with fineweb.py "
                                f"or pass --val_every 0")
            val_set = ValSet(TokenStream(val_paths, vocab), args.seq_len, args.val_tokens)
        self.log(f"data: {len(train_paths)} train shards, {loader.stream.total:,} tokens "
                 f"({loader.n_windows:,} sequences of {args.seq_len}); "
                 f"{args.max_steps * args.total_batch / max(1, loader.stream.total):.2f} epochs planned")
        return loader, val_set

    def save_checkpoint(self, step, elapsed, val_loss):
        rngs = self.dist.gather_objects(rng_state())  # one per rank
        if self.dist.master:
            ckpt = {
                "model": self.raw_model.state_dict(),  # no _orig_mod./module. prefixes
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else None,
                "step": step,
                "config": asdict(self.model_config),
                "args": {k: v for k, v in vars(self.args).items()},
                "loader": {"next_sequence": step * self.seqs_per_step, "seq_len": self.args.seq_len,
                           "seed": self.args.seed, "shuffle": self.args.shuffle},
                "rng": rngs,
                "elapsed": elapsed,
                "val_loss": val_loss,
            }
            path = checkpoint_path(self.args.log_dir, step)
            atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
            self.log(f"saved checkpoint {path}")
        self.dist.barrier()

    def restore(self, ckpt):
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        rngs = ckpt.get("rng") or []
        if self.dist.rank < len(rngs):
            set_rng_state(rngs[self.dist.rank])
        return ckpt["step"], ckpt.get("elapsed", 0.0)

    def write_log(self, step, **values):
        if not self.dist.master:
            return
        formats = {"train": "{:.6f}", "val": "{:.4f}", "hella": "{:.4f}", "hella_acc": "{:.4f}", "lr": "{:.6e}",
                   "norm": "{:.4f}", "dt": "{:.2f}", "tok/s": "{:.0f}", "mfu": "{:.4f}", "elapsed": "{:.1f}"}
        with open(self.log_file, "a") as f:
            for name, value in values.items():
                if value is not None:
                    f.write(f"{step} {name} {formats.get(name, '{}').format(value)}\n")

    def run(self):
        args, dist = self.args, self.dist
        resume_path, ckpt, loader, val_set = self.resume_path, self.ckpt, self.loader, self.val_set
        self.ckpt = None  # the weights are restored below; do not keep a second copy alive
        self.write_config(resume_path, loader.stream.total, val_set.n_windows * args.seq_len if val_set else 0)
        hella_examples = self.load_hellaswag()
        enc = get_encoding() if args.sample_every > 0 else None

        start_step, elapsed_before = 0, 0.0
        if ckpt is not None:
            start_step, elapsed_before = self.restore(ckpt)
            self.log(f"resumed from {resume_path} at step {start_step}")
            if dist.master:
                truncate_log(self.log_file, start_step)
                truncate_log(self.samples_file, start_step)
            del ckpt
        elif dist.master and os.path.exists(self.log_file):
            os.replace(self.log_file, self.log_file + ".old")  # a crashed run without checkpoints
            self.log(f"note: moved the previous {self.log_file} to log.txt.old")
        dist.barrier()

        stop = StopRequest()
        stop.install()
        t_start = time.time()
        val_loss, dt_ema = None, None
        for step in range(start_step, args.max_steps + 1):
            last = step == args.max_steps

            def due(every):  # periodic tasks also run once more at the very end
                return every > 0 and (step % every == 0 or last)

            due_ckpt = step > start_step and (due(args.checkpoint_every) or last)
            if step > start_step and (due_ckpt or due(args.val_every) or due(args.hellaswag_every)
                                      or due(args.sample_every)):
                self.check_weights(loader, step)  # never save or sample from diverged weights
            if due(args.val_every):
                val_loss = evaluate_val(self.model, val_set, dist, args.micro_batch, self.device, self.amp)
                self.log(f"step {step:5d} | val loss {val_loss:.4f}")
                self.write_log(step, val=val_loss)
            if hella_examples and due(args.hellaswag_every):
                self.run_hellaswag(step, hella_examples)
            if enc is not None and step > 0 and due(args.sample_every):
                self.run_samples(step, enc)
            if due_ckpt:
                self.save_checkpoint(step, elapsed_before + time.time() - t_start, val_loss)
            if last:
                self.write_log(step, elapsed=elapsed_before + time.time() - t_start)
                break

            t0 = time.time()
            loss, norm, lr, ok = self.train_step(loader, step)
            if not ok:
                raise UserError(f"loss is {loss} (grad norm {norm}) at step {step}; the update was not applied "
                                f"and no checkpoint was written; {self.divergence_hint()}")
            self.synchronize()
            dt = time.time() - t0
            dt_ema = dt if dt_ema is None else 0.9 * dt_ema + 0.1 * dt
            tok_s = args.total_batch / dt
            mfu = self.flops_per_token * tok_s / (self.peak * dist.world_size) if self.peak else None
            eta = dt_ema * (args.max_steps - step - 1)
            self.log(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.0f}ms | "
                     f"tok/s {tok_s:,.0f}" + (f" | mfu {mfu:.1%}" if mfu is not None else "") +
                     f" | eta {eta / 3600:.0f}h{eta % 3600 / 60:02.0f}m")
            self.write_log(step, train=loss, lr=lr, norm=norm, dt=dt * 1000, **{"tok/s": tok_s}, mfu=mfu,
                           elapsed=elapsed_before + time.time() - t_start)
            if dist.any(stop.requested) and step + 1 < args.max_steps:
                self.check_weights(loader, step + 1)
                self.save_checkpoint(step + 1, elapsed_before + time.time() - t_start, val_loss)
                self.log(f"stopped after step {step}; continue with the same command plus --resume")
                return

    @torch.no_grad()
    def check_weights(self, loader, step):
        """A finite training loss says nothing about the update that followed it: one no-grad forward
        on this step's first micro-batch makes sure the current weights still give a finite loss
        before they are evaluated, sampled from or checkpointed."""
        args = self.args
        x, y = loader.batch(step, 0, self.dist.rank, args.micro_batch, self.dist.world_size, self.seqs_per_step)
        with self.amp:
            _, loss = self.raw_model(x.to(self.device), y.to(self.device))
        loss = loss.item()
        if self.dist.any(not math.isfinite(loss)):
            raise UserError(f"the weights diverged after step {step - 1} (loss {loss} on a training batch); "
                            f"no checkpoint was written; {self.divergence_hint()}")

    def divergence_hint(self):
        good = list_checkpoints(self.args.log_dir)
        return f"resume from {good[-1][1]} with a lower --max_lr" if good else "lower --max_lr"

    def load_hellaswag(self):
        if self.args.hellaswag_every <= 0:
            return None
        import hellaswag

        try:
            return hellaswag.load_examples("val", limit=self.args.hellaswag_limit)
        except Exception as e:
            raise UserError(f"HellaSwag data unavailable ({type(e).__name__}: {e}); set HELLASWAG_DIR to a folder "
                            f"with hellaswag_val.jsonl, or pass --hellaswag_every 0")

    def run_hellaswag(self, step, examples):
        import hellaswag

        kwargs = {"batch_size": self.args.hellaswag_batch} if self.args.hellaswag_batch else {}
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.dtype)
        result = hellaswag.evaluate(self.model, examples, self.device, autocast_dtype=amp_dtype,
                                    rank=self.dist.rank, world_size=self.dist.world_size, **kwargs)
        self.log(f"step {step:5d} | hellaswag {result['num_correct_norm']}/{result['examples']} "
                 f"acc_norm {result['acc_norm']:.4f} acc {result['acc']:.4f}")
        self.write_log(step, hella=result["acc_norm"], hella_acc=result["acc"])

    def run_samples(self, step, enc):
        if not self.dist.master:
            return  # cheap; one rank is enough
        texts = generate_samples(self.raw_model, enc, self.args.sample_prompt, self.args.num_samples,
                                 self.args.sample_tokens, self.args.seed + step, self.device, self.amp)
        with open(self.samples_file, "a") as f:
            for i, text in enumerate(texts):
                self.log(f"sample {i}: {text}")
                f.write(f"{step} sample{i} {json.dumps(text)}\n")


# -----------------------------------------------------------------------------
# 4. Entry points


def export_checkpoint(path, out_dir):
    """--export: one of our checkpoints -> a transformers GPT2LMHeadModel folder."""
    if not os.path.isfile(path):
        raise UserError(f"--export {path}: no such checkpoint")
    try:
        model = load_checkpoint_model(path)
    except Exception as e:
        raise UserError(f"--export: cannot read {path} ({type(e).__name__}: {e})")
    if model.config.arch != "gpt2":
        raise UserError("--export: only --arch gpt2 checkpoints map onto transformers' GPT2LMHeadModel")
    out_dir = out_dir or os.path.splitext(path)[0] + "_hf"
    model.save_pretrained(out_dir)
    print(f"exported {path} to {out_dir} (load with transformers.GPT2LMHeadModel.from_pretrained)")


def main(argv=None):
    args = get_args(argv)
    dist = Dist()
    try:
        if args.export:
            return export_checkpoint(args.export, args.export_dir)
        resolve_arch_defaults(args)
        if args.total_batch is None:
            # a benchmark step is one micro-step per GPU unless asked otherwise
            args.total_batch = args.micro_batch * args.seq_len * dist.world_size if args.benchmark else 524288
        trainer = Trainer(args, dist)
        if args.benchmark:
            trainer.run_benchmark()
        else:
            trainer.run()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.ddp and torch.distributed.is_initialized():
            dist.destroy()


if __name__ == "__main__":
    main()
