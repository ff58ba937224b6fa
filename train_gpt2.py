"""
Train GPT-2 (124M and up) from scratch on FineWeb-Edu shards, on one device or many.

    python train_gpt2.py                                        # one GPU, CPU or MPS
    torchrun --standalone --nproc_per_node=4 train_gpt2.py      # 4 GPUs on one box

The file reads top to bottom:
  1. the model: GPTConfig, GPT (faithful GPT-2, or "modern": RoPE + SwiGLU + RMSNorm), its fp32
     loss (whole under torch.compile, chunked when eager), Hugging Face import/export;
  2. the data: TokenStream (memory-mapped uint16 shards, token ids checked up front), TrainLoader
     (windows in a seeded per-epoch order; built with its rank/micro-batch layout, so a batch is
     loader.batch(step, micro_step) and depends only on the seed and the step), ValSet;
  3. training: the LR schedule and the optimizers (AdamW, or Muon + AdamW), devices and dtypes,
     Dist (torchrun), StopRequest (Ctrl-C / SIGTERM), RunDir (the log dir's files, checkpoints and
     resume rules), evaluate_val, the arguments and their checks, and Trainer: setup (__init__),
     one optimizer step (train_step), the loop (run, periodic_tasks), benchmark;
  4. entry points: --export, and main(), where every error becomes one line.
Importing this file has no side effects: everything that runs lives under main().
"""

import argparse
import contextlib
import glob
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.nn import functional as F

GPT2_VOCAB = 50257  # tokens the GPT-2 tokenizer can produce; the model pads its vocab to 50304
EOT = 50256  # <|endoftext|>, which fineweb.py puts in front of every document


class UserError(Exception):
    """Bad input, or a state the user must fix: main() prints it as one line "error: ...", exit 1."""


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


# Eager runs compute the loss in chunks of this many fp32 logits (128 MB), see ChunkedCrossEntropy.
LOSS_CHUNK_ELEMENTS = 2**25


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean fp32 cross-entropy of (N, V) logits of any dtype, target -1 = ignored; used by EAGER
    runs only. Eager `F.cross_entropy(logits.float())` keeps an fp32 (N, V) log-softmax alive from
    the forward to the backward, 3.3 GB at B=16, T=1024 on top of the bf16 logits. This keeps the
    logits and one fp32 log-sum-exp per row, and recomputes the softmax chunk by chunk in the
    backward, so fp32 temporaries never exceed one chunk. Under torch.compile it is not used: the
    compiler fuses the upcast into its loss kernels and saves no fp32 copy by itself, while a traced
    version of this loop would keep every fp32 chunk alive until the backward."""

    @staticmethod
    def forward(ctx, logits, targets):
        N, V = logits.shape
        rows = max(1, LOSS_CHUNK_ELEMENTS // V)
        lse = torch.cat([torch.logsumexp(logits[i:i + rows].float(), dim=-1) for i in range(0, N, rows)])  # (N,)
        valid = targets != -1
        safe_targets = targets.masked_fill(~valid, 0)
        target_logits = logits.gather(1, safe_targets[:, None]).squeeze(1).float()  # (N,)
        n_valid = valid.sum().clamp(min=1)
        ctx.save_for_backward(logits, safe_targets, valid, lse, n_valid)
        return ((lse - target_logits) * valid).sum() / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        logits, safe_targets, valid, lse, n_valid = ctx.saved_tensors
        N, V = logits.shape
        rows = max(1, LOSS_CHUNK_ELEMENTS // V)
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
    """logits (B, T, V) of any dtype, targets (B, T) with -1 = ignore -> mean loss, computed in fp32.
    One formula, two implementations: the compiler sees plain F.cross_entropy (one graph, fused);
    an eager run takes the chunked Function, which saves 3.3 GB at B=16."""
    logits, targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)  # (B*T, V), (B*T,)
    if torch.compiler.is_compiling():
        return F.cross_entropy(logits.float(), targets, ignore_index=-1)
    return ChunkedCrossEntropy.apply(logits, targets)


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
        """idx (B, T) -> (logits (B, T, V), None); with targets (B, T), -1 = ignore: (None, loss).
        The logits are not returned with the loss: `_, loss = model(x, y)` would otherwise keep the
        last micro-step's logits (1.6 GB in bf16 at B=16) alive through the next forward."""
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
        if targets is None:
            return logits, None
        return None, cross_entropy_fp32(logits, targets)

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
    ckpt = read_checkpoint(path)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device)


# -----------------------------------------------------------------------------
# 2. The data


def find_shards(data_dir, split):
    """Sorted shard paths of one split: build-nanogpt's `edufineweb_{split}_NNNNNN.npy` names,
    or any `<prefix>_{split}_NNNNNN.npy`."""
    return sorted(glob.glob(os.path.join(data_dir, f"*{split}_[0-9][0-9][0-9][0-9][0-9][0-9].npy")))


class TokenStream:
    """Several uint16 shards read as one long token stream, memory-mapped (a 100M-token shard
    costs no RAM until read, and is never converted to int64 as a whole)."""

    def __init__(self, paths):
        self.paths, self.arrays = list(paths), []
        for path in self.paths:
            try:
                arr = np.load(path, mmap_mode="r")
            except Exception as e:  # not a .npy file at all, a pickle, a truncated copy, ...
                raise UserError(f"{path} is not a readable .npy token shard ({type(e).__name__}); "
                                f"delete it and re-create the shards with fineweb.py") from None
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
        return out

    def check_token_ids(self, dist, chunk=1 << 26):
        """Every token must be a GPT-2 id (< 50257): found now, not when a bad window is read hours
        into a run. fineweb.py records each shard's largest id in its manifest.json, which is
        trusted when the shard's size matches; other shards are scanned, split across ranks."""
        known = shard_max_tokens_from_manifest(self.paths)
        mine = {}
        for i in range(dist.rank, len(self.paths), dist.world_size):
            if i not in known:
                arr = self.arrays[i]
                mine[i] = max((int(arr[s:s + chunk].max()) for s in range(0, len(arr), chunk)), default=0)
        for part in dist.gather_objects(mine):
            known.update(part)
        for i, path in enumerate(self.paths):
            if known[i] >= GPT2_VOCAB:
                raise UserError(f"shard {path} holds token id {known[i]}, not a GPT-2 token (ids < {GPT2_VOCAB}); "
                                f"the shards were not made with the GPT-2 tokenizer: re-create them with fineweb.py")


def shard_max_tokens_from_manifest(paths):
    """{index in paths: largest token id} for the shards that fineweb.py's manifest.json describes."""
    found = {}
    for manifest_path in {os.path.join(os.path.dirname(p), "manifest.json") for p in paths}:
        try:
            with open(manifest_path) as f:
                shards = {s["file"]: s for s in json.load(f)["shards"]}
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no manifest (build-nanogpt's shards) or not ours: scan instead
        for i, path in enumerate(paths):
            entry = shards.get(os.path.basename(path))
            if (os.path.dirname(path) == os.path.dirname(manifest_path) and entry and "max_token" in entry
                    and entry.get("bytes") == os.path.getsize(path)):
                found[i] = int(entry["max_token"])
    return found


def to_batch(windows):
    """(B, T+1) uint16 windows -> inputs and targets, (B, T) int64 each, contiguous (a strided
    slice would be copied to the GPU through an unpinned temporary, see to_device)."""
    t = torch.from_numpy(windows.astype(np.int64))
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class TrainLoader:
    """Training sequences are windows of seq_len+1 tokens at stride seq_len over the stream of all
    train shards, so every token is a target exactly once per epoch and nothing is lost at shard
    ends. With shuffle, each epoch concatenates the shards in a new seeded order and visits the
    windows in a new seeded order.

    The global sequence counter g runs across epochs; step s uses g in [s*S, (s+1)*S) with
    S = seqs_per_step = total_batch // seq_len sequences. Which of those this rank reads depends on
    its rank, the micro-step and micro_batch, but the set does not: 1 GPU and 8 GPUs at the same
    total batch train on exactly the same data, and resuming at step s needs nothing but s."""

    def __init__(self, stream, seq_len, seed, shuffle, *, seqs_per_step, micro_batch, rank=0, world_size=1):
        self.stream, self.seq_len, self.seed, self.shuffle = stream, seq_len, seed, shuffle
        self.seqs_per_step, self.micro_batch, self.rank, self.world_size = seqs_per_step, micro_batch, rank, world_size
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

    def sequence_ids(self, step, micro_step):
        first = step * self.seqs_per_step + (micro_step * self.world_size + self.rank) * self.micro_batch
        return range(first, first + self.micro_batch)

    def batch(self, step, micro_step):
        """This rank's micro-batch of a step: x, y (micro_batch, seq_len) int64."""
        return to_batch(np.stack([self.window(g) for g in self.sequence_ids(step, micro_step)]))


class ValSet:
    """The first val_tokens tokens of the val shard(s), as windows of seq_len+1 at stride seq_len:
    the same fixed set whatever the micro-batch or the number of GPUs."""

    def __init__(self, stream, seq_len, val_tokens):
        self.stream, self.seq_len = stream, seq_len
        self.n_windows = min(val_tokens, stream.total - 1) // seq_len
        if self.n_windows < 1:
            raise UserError(f"the val shards hold {stream.total:,} tokens, fewer than one sequence of "
                            f"{seq_len + 1}; make a larger val shard with fineweb.py or pass --val_every 0")
        self.order = np.arange(len(stream.arrays))
        self.starts = np.concatenate([[0], np.cumsum(stream.lengths)[:-1]])

    def windows(self, ids):
        return np.stack([self.stream.read(self.order, self.starts, k * self.seq_len, self.seq_len + 1) for k in ids])


class SyntheticLoader:
    """Random tokens for --benchmark: the real loop without a data dir."""

    def __init__(self, seq_len, micro_batch, seed):
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, step, micro_step):
        windows = torch.randint(0, GPT2_VOCAB, (self.micro_batch, self.seq_len + 1), generator=self.generator)
        return to_batch(windows.numpy())


# -----------------------------------------------------------------------------
# 3. Training


def lr_factor(step, warmup_steps, max_steps, min_lr_ratio):
    """build-nanogpt's schedule as a multiplier of the peak LR: linear warmup to 1 over
    warmup_steps, then a cosine down to min_lr_ratio at max_steps (and flat after it)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr_ratio
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_lr_ratio)


ADAMW = dict(betas=(0.9, 0.95), eps=1e-8)  # build-nanogpt's (GPT-3 paper's) AdamW
# torch.optim.Muon settings: Keller Jordan's momentum and Newton-Schulz steps; "match_rms_adamw"
# scales each update to AdamW's typical RMS (Moonshot, arXiv:2502.16982) so AdamW-tuned LRs and
# weight decay carry over.
MUON = dict(nesterov=True, ns_steps=5, adjust_lr_fn="match_rms_adamw")
# --muon_lr defaults to this times --max_lr: 1x, 2x and 4x on a 4-layer model on CPU put 2x and 4x
# ahead of 1x by ~0.02 val loss at two seeds (benchmarks/README.md); a first sign, not the 124M tuning
MUON_LR_MULTIPLE = 2.0


def muon_params(model):
    """The matrices torch.optim.Muon trains: every 2-D weight inside the transformer blocks. The
    embeddings (and so the tied head) and all 1-D gains and biases stay with AdamW, as Muon's
    authors recommend. The fused q/k/v matrix is orthogonalised as ONE (3C, C) matrix: on the
    shared corpus (benchmarks/bench_muon.py, 4-layer model, 2 seeds) splitting it into three
    lowered the val loss by only 0.003-0.006, a tenth of the seed-to-seed spread (0.035), and one
    tensor keeps checkpoints and the HF export unchanged."""
    return [p for name, p in model.named_parameters() if name.startswith("transformer.h.") and p.dim() == 2]


def configure_optimizers(model, args, device_type):
    """-> (optimizers, their settings for config.json). AdamW with weight decay only on tensors of
    >= 2 dims (not on biases and norm gains), fused on CUDA; with --optimizer muon the block
    matrices go to torch.optim.Muon instead. Every parameter is in exactly one group."""
    hidden = muon_params(model) if args.optimizer == "muon" else []
    taken = {id(p) for p in hidden}
    rest = [p for p in model.parameters() if id(p) not in taken]
    decay, no_decay = [p for p in rest if p.dim() >= 2], [p for p in rest if p.dim() < 2]
    adamw = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                               {"params": no_decay, "weight_decay": 0.0}],
                              lr=args.max_lr, fused=device_type == "cuda", **ADAMW)
    optimizers = [adamw]
    settings = {"adamw": dict(lr=args.max_lr, **ADAMW, weight_decay=args.weight_decay,
                              params=sum(p.numel() for p in rest))}
    if hidden:
        optimizers.append(torch.optim.Muon(hidden, lr=args.muon_lr, weight_decay=args.weight_decay,
                                           momentum=args.muon_momentum, **MUON))
        settings["muon"] = dict(lr=args.muon_lr, momentum=args.muon_momentum, **MUON,
                                weight_decay=args.weight_decay, params=sum(p.numel() for p in hidden))
    return optimizers, settings


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
    """--device -> a device string. "auto" picks cuda > mps > cpu; a bare "cuda" means this
    process's GPU (LOCAL_RANK under torchrun), so `--device cuda` works with any GPU count."""
    if requested == "auto":
        if torch.cuda.is_available():
            return f"cuda:{local_rank}"
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda":
        return f"cuda:{local_rank}"
    return requested


def resolve_device(requested, local_rank=0):
    """--device -> torch.device, or a UserError when this machine has no such device."""
    try:
        device = torch.device(choose_device(requested, local_rank))
    except RuntimeError:
        raise UserError(f"--device {requested}: unknown device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index is None or device.index >= n:
            raise UserError(f"--device {requested}: this machine has {n} CUDA device(s)"
                            + (f" (cuda:0 .. cuda:{n - 1})" if n else "; use --device cpu"))
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise UserError(f"--device {requested}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise UserError(f"--device {requested}: not supported; use auto, cpu, cuda, cuda:N or mps")
    return device


DTYPES = ("auto", "bf16", "fp16", "fp32")


def choose_dtype(requested, device):
    """auto: bf16 on CUDA cards with native bf16 (compute capability >= 8.0: A100, 30xx, 40xx, H100),
    fp16 with a GradScaler on older CUDA cards (V100, T4: torch.cuda.is_bf16_supported() says True
    there too, but their bf16 is emulated), fp32 on CPU and MPS."""
    device = torch.device(device)
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    return "fp32"


def autocast_ctx(device_type, dtype):
    """Mixed precision for "bf16"/"fp16" (matmuls in half precision, weights and loss in fp32)."""
    if dtype in ("bf16", "fp16"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16)
    return contextlib.nullcontext()


def device_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def synchronize(device):
    """Wait for the device's queued work, so a wall-clock time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def speed_figures(times, tokens_per_step, flops_per_token, peak, device, compiled, world_size=1):
    """--benchmark's figures from the wall time of each step: the median of the steps after the
    first third (compile and warm-up excluded); MFU against `peak` FLOP/s per device."""
    steady = times[max(1, len(times) // 3):] or times
    dt = statistics.median(steady)
    tok_s = tokens_per_step / dt
    return {
        "tokens_per_s": round(tok_s, 1),
        "mfu": round(flops_per_token * tok_s / (peak * world_size), 4) if peak else None,
        "step_ms": round(dt * 1000, 2),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None,
        "compile_s": round(times[0] - dt, 2) if compiled else 0.0,
    }


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an unreaped child is a zombie: dead too
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class Dist:
    """Who we are in a torchrun job (or a single process), and the few collectives the loop uses."""

    def __init__(self):
        self.ddp = int(os.environ.get("RANK", -1)) != -1
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.master = self.rank == 0
        self.local_peers = {}  # rank -> pid of the other ranks on this machine

    def init(self, device):
        self.device = device
        if self.ddp:
            import torch.distributed as dist

            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            me = (socket.gethostname(), os.getpid(), self.rank)
            self.local_peers = {r: pid for host, pid, r in self.gather_objects(me) if host == me[0] and r != self.rank}

    def dead_peers(self):
        return sorted(r for r, pid in self.local_peers.items() if not pid_alive(pid))

    def all_reduce(self, tensor, op="sum"):
        if self.ddp:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.AVG if op == "avg" else dist.ReduceOp.SUM)
        return tensor

    def any(self, flag):
        """True on every rank if flag is True on any rank."""
        if not self.ddp:
            return bool(flag)
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
        if self.ddp and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class Interrupted(Exception):
    """Raised out of an evaluation when a stop was requested (see StopRequest)."""


class StopRequest:
    """Ctrl-C or SIGTERM (a preempted or `kill`ed job) asks the loop to stop after the current
    step or evaluation, save a checkpoint and exit with 128 + the signal number (so that
    `train && next_step` does not carry on). A second Ctrl-C stops at once.

    Under torchrun a SIGTERM also comes when another rank has crashed: torchrun stops the
    survivors and kills them 30 s later. A survivor's main thread may then be stuck in a collective
    with the dead rank, where no Python signal handler runs; so a watcher thread, woken by the
    signal through a wakeup fd (which the C-level handler writes to even then), checks whether a
    rank on this machine has died and, if so, exits at once."""

    def __init__(self, dist, log, last_checkpoint):
        self.dist, self.log, self.last_checkpoint = dist, log, last_checkpoint
        self.signum = None

    @property
    def requested(self):
        return self.signum is not None

    def install(self):
        signal.signal(signal.SIGINT, self.handler)
        signal.signal(signal.SIGTERM, self.handler)
        if self.dist.local_peers:
            reader, writer = socket.socketpair()
            writer.setblocking(False)
            signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
            self._wakeup = (reader, writer)  # keep both sockets alive
            threading.Thread(target=self.watch_peers, args=(reader,), daemon=True).start()

    def handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        self.log(f"\nsignal {signum}: finishing this step, then saving a checkpoint (Ctrl-C again to abort)",
                 file=sys.stderr)

    def watch_peers(self, reader):
        while True:
            if signal.SIGTERM not in reader.recv(64):
                continue
            time.sleep(0.2)  # torchrun reaps a crashed worker before it stops the others; be sure
            dead = self.dist.dead_peers()
            if dead:
                alive = [r for r in self.dist.local_peers if r not in dead] + [self.dist.rank]
                if self.dist.rank == min(alive):  # one line per machine, not one per rank
                    last = self.last_checkpoint()
                    print(f"error: rank {', '.join(map(str, dead))} died, so torchrun stopped this job; "
                          f"no checkpoint was written " + (f"(resume from {last})" if last else ""),
                          file=sys.stderr, flush=True)
                os._exit(1)


# --- the log dir: logs, config, samples and checkpoints, and the rules that keep them safe


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


def read_checkpoint(path):
    """torch.load of one of our checkpoints, or a UserError that says what is wrong with the file."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory, not a checkpoint file")
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path} is empty (0 bytes), not a checkpoint of this trainer (an interrupted copy?); "
                        f"use another checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # text, a truncated file, somebody else's pickle, ...
        ckpt = None
    if not isinstance(ckpt, dict) or not {"model", "config", "step"} <= ckpt.keys():
        raise UserError(f"{path} is not a checkpoint of this trainer (train_gpt2.py), or it is damaged; use another one")
    return ckpt


def count_due(every, after, last):
    """How many steps s in (after, last] run a task that is due every `every` steps (0: never)
    and once more at `last`."""
    if after >= last:
        return 0
    if every <= 0:
        return 1
    return last // every - after // every + (last % every != 0)


class RunDir:
    """--log_dir and its rules. A fresh run never touches another run's checkpoints (it refuses)
    and moves an earlier run's logs aside under a new name, never overwriting anything; --resume
    cuts log.txt and samples.txt back to the checkpoint, so no step is logged twice; checkpoints
    are written atomically after a free-space check, and the leftovers of a killed write are
    removed. Only rank 0 writes; nothing is changed before every check of the start has passed."""

    EVAL_RECORDS = ("val", "hella", "hella_acc")
    # log.txt's "{step} {name} {value}" records: build-nanogpt's names, with their precision
    LOG_FORMATS = {"train": "{:.6f}", "val": "{:.4f}", "hella": "{:.4f}", "hella_acc": "{:.4f}", "lr": "{:.6e}",
                   "norm": "{:.4f}", "dt": "{:.2f}", "tok/s": "{:.0f}", "mfu": "{:.4f}", "elapsed": "{:.1f}"}

    def __init__(self, path, master):
        self.path, self.master = path, master
        self.log_file = os.path.join(path, "log.txt")
        self.samples_file = os.path.join(path, "samples.txt")
        self.config_file = os.path.join(path, "config.json")

    def checkpoint_path(self, step):
        return os.path.join(self.path, f"model_{step:05d}.pt")

    def checkpoints(self):
        """(step, path) of every checkpoint here, oldest first."""
        found = []
        for path in glob.glob(os.path.join(self.path, "model_*.pt")):
            m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(path))
            if m:
                found.append((int(m.group(1)), path))
        return sorted(found)

    def last_checkpoint(self):
        found = self.checkpoints()
        return found[-1][1] if found else None

    def find_resume(self, resume):
        """--resume (the newest readable checkpoint here) or --resume PATH -> (path, checkpoint)."""
        if resume != "latest":
            try:
                return resume, read_checkpoint(resume)
            except UserError as e:
                raise UserError(f"--resume: {e}") from None
        found = self.checkpoints()
        if not found:
            raise UserError(f"--resume: no checkpoint model_*.pt in {self.path}; start without --resume")
        for _, path in reversed(found):  # newest first; skip any that cannot be read
            try:
                return path, read_checkpoint(path)
            except UserError as e:
                print(f"warning: skipping {e}", file=sys.stderr)
        raise UserError(f"--resume: no readable checkpoint in {self.path}")

    def check_fresh(self):
        if self.checkpoints():
            raise UserError(f"{self.path} already holds checkpoints; use --resume to continue that run "
                            f"or another --log_dir for a new one")

    def start_fresh(self):
        """An earlier run's logs without checkpoints (it crashed early): keep them, under
        earlier_run_N/, rather than appending to them or overwriting an older copy."""
        files = [f for f in (self.log_file, self.samples_file, self.config_file) if os.path.exists(f)]
        if not files:
            return None
        n = 1
        while os.path.exists(os.path.join(self.path, f"earlier_run_{n}")):
            n += 1
        dest = os.path.join(self.path, f"earlier_run_{n}")
        os.makedirs(dest)
        for f in files:
            os.replace(f, os.path.join(dest, os.path.basename(f)))
        return dest

    def cut_back(self, step, keep_evals):
        """Keep the records of the steps before `step`, and those of `step` itself that were
        written before its checkpoint (its evaluations), so a resumed run logs nothing twice."""
        def keep(line):
            parts = line.split(" ", 2)  # "{step} {name} {value}"; samples: "{step} sample{i} {json}"
            if len(parts) < 3 or not parts[0].isdigit():
                return False
            s, name = int(parts[0]), parts[1]
            return s < step or (s == step and keep_evals and (name in self.EVAL_RECORDS or name.startswith("sample")))

        for path in (self.log_file, self.samples_file):
            if os.path.exists(path):
                with open(path) as f:
                    lines = f.read().split("\n")[:-1]  # a last line without "\n" was cut off by a kill
                kept = "".join(line + "\n" for line in lines if keep(line))
                atomic_write(path, lambda tmp: write_text(tmp, kept))

    def remove_stale_temps(self, log):
        """A kill during an atomic write leaves `<name>.tmp<pid>` (up to 1.5 GB for a checkpoint)."""
        for path in glob.glob(os.path.join(self.path, "*.tmp[0-9]*")):
            pid = re.search(r"\.tmp(\d+)$", path)
            if pid and not pid_alive(int(pid.group(1))):
                size = os.path.getsize(path)
                os.remove(path)
                log(f"removed {path} ({size / 2**20:,.0f} MB), left by a write that was killed")

    def log(self, step, **values):
        if self.master:
            with open(self.log_file, "a") as f:
                for name, value in values.items():
                    if value is not None:
                        f.write(f"{step} {name} {self.LOG_FORMATS.get(name, '{}').format(value)}\n")

    def write_samples(self, step, texts):
        if self.master:
            with open(self.samples_file, "a") as f:
                for i, text in enumerate(texts):
                    f.write(f"{step} sample{i} {json.dumps(text)}\n")

    def write_config(self, config):
        if self.master:
            atomic_write(self.config_file, lambda tmp: write_text(tmp, json.dumps(config, indent=2) + "\n"))

    def previous_config(self):
        try:
            with open(self.config_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def save_checkpoint(self, step, state):
        """Atomically write model_{step}.pt (rank 0). -> None, or the error message of a failed
        write; the caller makes the outcome collective. A failed write never touches the earlier
        checkpoints and leaves no temp file."""
        if not self.master:
            return None
        path = self.checkpoint_path(step)
        need = sum(t.numel() * t.element_size() for t in tensors_in(state)) + (64 << 20)
        free = shutil.disk_usage(self.path).free
        if free < need:
            return self.no_space(path, need, free)
        try:
            atomic_write(path, lambda tmp: torch.save(state, tmp))
        except Exception as e:  # torch.save reports a full disk as "unexpected pos" or "file write failed"
            free = shutil.disk_usage(self.path).free
            if free < need:
                return self.no_space(path, need, free)
            return f"cannot write checkpoint {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        return None

    def no_space(self, path, need, free):
        last = self.last_checkpoint()
        return (f"No space left on device for checkpoint {path}: it needs about {need / 2**30:.2f} GiB, "
                f"{free / 2**30:.2f} GiB are free; free some space" +
                (f" and resume from {last} with --resume" if last else ""))


def tensors_in(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from tensors_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from tensors_in(v)


# These arguments fix the model, the data order and the optimizer: resuming with other values
# would not continue the same run.
RESUME_MUST_MATCH = ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size",
                     "seq_len", "total_batch", "seed", "shuffle", "optimizer")


# --- evaluation

# Evaluations (val here, HellaSwag in hellaswag.py) check for a stop request every this many
# forward passes. Under DDP a check all-reduces a flag and reads it back: a host sync (~0.1 ms plus a
# GPU bubble of about one batch build, ~1 ms), against >= ~40 ms for 8 forwards of a 124M model even
# on an H100, so ~2%; and a stop still lands within 8 forwards.
STOP_CHECK_EVERY = 8


@torch.no_grad()
def evaluate_val(model, val_set, dist, micro_batch, device, amp, should_stop=None):
    """Mean loss over every target token of the fixed val set. Windows are dealt out to ranks
    round-robin; sums and counts are all-reduced, so the result does not depend on the GPU count.
    A short last batch is padded with ignored targets so the shape (and compiled graph) is fixed.
    should_stop() is called on every rank at the same batch slots (it may be a collective)."""
    was_training = model.training
    model.eval()
    my_ids = list(range(dist.rank, val_set.n_windows, dist.world_size))
    n_slots = math.ceil(math.ceil(val_set.n_windows / dist.world_size) / micro_batch)  # same on every rank
    loss_sum = torch.zeros((), dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    count = torch.zeros_like(loss_sum)
    try:
        for slot in range(n_slots):
            if should_stop is not None and slot % STOP_CHECK_EVERY == 0 and should_stop():
                raise Interrupted
            ids = my_ids[slot * micro_batch:(slot + 1) * micro_batch]
            if not ids:
                continue
            x, y = to_batch(val_set.windows(ids))
            n_pad = micro_batch - len(ids)
            if n_pad:
                x = torch.cat([x, x[:1].expand(n_pad, -1)])
                y = torch.cat([y, torch.full((n_pad, y.size(1)), -1, dtype=y.dtype)])
            x, y = batch_to_device(x, y, device)
            with amp:
                _, loss = model(x, y)
            n = len(ids) * y.size(1)
            loss_sum += loss.to(loss_sum.dtype) * n
            count += n
    finally:
        model.train(was_training)
    dist.all_reduce(loss_sum)
    dist.all_reduce(count)
    return (loss_sum / count).item()


def to_device(t, device):
    """One host->device copy. On CUDA from pinned memory with non_blocking, so the copy overlaps
    the GPU's work instead of waiting for it (t must be contiguous, or the pinned copy goes through
    an unpinned temporary). On MPS and CPU a plain copy: non_blocking from unpinned memory on MPS
    has been reported to silently corrupt data (pytorch/pytorch#139550)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def batch_to_device(x, y, device):
    """A training or val batch to the device, marked static for torch.compile: those graphs then
    keep fixed shapes whatever ran before them (HellaSwag's varying lengths would otherwise make
    dynamo compile symbolic shapes)."""
    x, y = to_device(x, device), to_device(y, device)
    torch._dynamo.mark_static(x)
    torch._dynamo.mark_static(y)
    return x, y


def generate_samples(model, enc, prompt, num_samples, max_new_tokens, seed, device, amp):
    """num_samples continuations of prompt; the generator is seeded per call, so the samples
    at a step are reproducible and never disturb anything else."""
    generator = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor(enc.encode(prompt), dtype=torch.long, device=device)[None].repeat(num_samples, 1)
    with amp:
        out = model.generate(idx, max_new_tokens, top_k=50, generator=generator)
    return [enc.decode([t for t in row.tolist() if t < GPT2_VOCAB]) for row in out]


def get_encoding():
    """tiktoken's GPT-2 BPE (downloaded once; offline it reads $TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UserError(f"cannot load tiktoken's gpt2 encoding ({type(e).__name__}); connect to the internet "
                        f"once, or set TIKTOKEN_CACHE_DIR to a folder holding its cached GPT-2 files") from None


# --- arguments


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" unless the help text already says what the default is."""

    def _get_help_string(self, action):
        if "default" in (action.help or "") or action.default in (None, argparse.SUPPRESS, False):
            return action.help
        return super()._get_help_string(action)


# Per-arch defaults. gpt2: build-nanogpt's (GPT-3 paper's 124M LR x1, 375M-token warmup).
# modern: the seed's 050226 run (RoPE + SwiGLU + RMSNorm, 2 epochs: val 2.99, HellaSwag 0.32),
# which tolerates a 3x higher LR and a shorter warmup.
ARCH_DEFAULTS = {"gpt2": {"max_lr": 6e-4, "warmup_steps": 715}, "modern": {"max_lr": 1.8e-3, "warmup_steps": 285}}


def get_args(argv=None):
    p = argparse.ArgumentParser(description="Train GPT-2 on FineWeb-Edu shards (see README.md).",
                                formatter_class=HelpFormatter)
    a = p.add_argument
    a("--data_dir", default="edu_fineweb10B", help="folder of *_val_NNNNNN.npy / *_train_NNNNNN.npy uint16 shards")
    a("--log_dir", default="log", help="log.txt, config.json, samples.txt and checkpoints go here")
    a("--model", default="gpt2", choices=list(MODEL_PRESETS), help="GPT-2 size preset")
    a("--arch", default="gpt2", choices=ARCHS, help="gpt2: faithful; modern: RoPE + SwiGLU + RMSNorm, no biases")
    a("--n_layer", type=int, default=None, help="layers (default: the preset's, 12 for gpt2)")
    a("--n_head", type=int, default=None, help="attention heads (default: the preset's, 12 for gpt2)")
    a("--n_embd", type=int, default=None, help="width (default: the preset's, 768 for gpt2)")
    a("--block_size", type=int, default=None, help="longest sequence the model takes (default: 1024)")
    a("--vocab_size", type=int, default=50304, help="embedding rows, >= 50257 (GPT-2's vocab padded to a multiple of 64)")
    a("--micro_batch", type=int, default=16, help="sequences per forward pass per GPU")
    a("--seq_len", type=int, default=1024, help="tokens per training sequence, <= block size")
    a("--total_batch", type=int, default=None, help="tokens per optimizer step over all GPUs (default: 524288; "
                                                     "with --benchmark one micro-batch per GPU)")
    a("--max_steps", type=int, default=19073, help="optimizer steps (19073 x 524288 = 10B tokens)")
    a("--warmup_steps", type=int, default=None, help="linear LR warmup steps (default: 715 for gpt2, 285 for modern)")
    a("--optimizer", default="adamw", choices=["adamw", "muon"],
      help="adamw: build-nanogpt's; muon: torch.optim.Muon (torch >= 2.9) for the block matrices, AdamW for the rest")
    a("--max_lr", type=float, default=None, help="peak AdamW LR (default: 6e-4 for gpt2, build-nanogpt's; "
                                                  "1.8e-3 for modern, the seed run's)")
    a("--muon_lr", type=float, default=None, help="peak Muon LR, with AdamW-matched update RMS (default: 2 x --max_lr; "
                                                   "on a tiny CPU model 2x beat 1x, see benchmarks/README.md)")
    a("--muon_momentum", type=float, default=0.95, help="Muon momentum (Nesterov), Keller Jordan's value")
    a("--min_lr_ratio", type=float, default=0.1, help="the cosine ends at the peak LR times this, in [0, 1]")
    a("--weight_decay", type=float, default=0.1, help="decoupled weight decay of matrices and embeddings")
    a("--grad_clip", type=float, default=1.0, help="max global grad norm; 0 = no clipping")
    a("--seed", type=int, default=1337, help="model init and data order")
    a("--shuffle", type=int, default=1, choices=[0, 1], help="a new seeded order of shards and sequences every epoch")
    a("--val_every", type=int, default=250, help="steps between validations (0 = off)")
    a("--val_tokens", type=int, default=10485760, help="validate on the first this many val tokens")
    a("--hellaswag_every", type=int, default=250, help="steps between HellaSwag evals (0 = off)")
    a("--hellaswag_limit", type=int, default=None, help="only the first N HellaSwag examples (default: all 10,042). "
                                                         "Rows longer than the block size keep their last block-size "
                                                         "tokens (the context is cut from the left)")
    a("--hellaswag_batch", type=int, default=None, help="HellaSwag examples per forward pass (default: 32 on a GPU, 8 on CPU)")
    a("--sample_every", type=int, default=250, help="steps between text samples (0 = off)")
    a("--sample_prompt", default="Hello, I'm a language model,", help="prompt of the samples")
    a("--num_samples", type=int, default=4, help="samples each time")
    a("--sample_tokens", type=int, default=32, help="tokens per sample")
    a("--checkpoint_every", type=int, default=5000, help="steps between checkpoints (0 = only the final one)")
    a("--resume", nargs="?", const="latest", default=None,
      help="continue from the latest checkpoint in --log_dir, or from the checkpoint PATH given (default: a new run)")
    a("--compile", type=int, default=None, choices=[0, 1], help="torch.compile the model (default: 1 on CUDA, else 0)")
    a("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    a("--dtype", default="auto", choices=DTYPES, help="auto: bf16 on CUDA cards that have it, fp16 on older ones, "
                                                      "fp32 on CPU/MPS (default: auto)")
    a("--peak_tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU on unlisted cards "
                                                       "(default: known for H100/H200, A100, 4090, 3090)")
    a("--benchmark", action="store_true", help="train --steps steps on random tokens and print one JSON line")
    a("--steps", type=int, default=20, help="steps for --benchmark")
    a("--export", metavar="CHECKPOINT", default=None, help="export a checkpoint to a transformers folder and exit")
    a("--export_dir", default=None, help="where --export writes (default: CHECKPOINT without .pt + _hf)")
    return p.parse_args(argv)


def resolve_defaults(args, world_size):
    """Fill in the defaults that depend on other arguments."""
    for name, value in ARCH_DEFAULTS[args.arch].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.muon_lr is None and args.optimizer == "muon":
        args.muon_lr = MUON_LR_MULTIPLE * args.max_lr
    if args.total_batch is None:
        args.total_batch = args.micro_batch * args.seq_len * world_size if args.benchmark else 524288


def model_config_from_args(args):
    n_layer, n_head, n_embd = MODEL_PRESETS[args.model]
    pick = lambda value, preset: preset if value is None else value  # noqa: E731 (0 is a value, not "unset")
    return GPTConfig(block_size=pick(args.block_size, 1024), vocab_size=args.vocab_size,
                     n_layer=pick(args.n_layer, n_layer), n_head=pick(args.n_head, n_head),
                     n_embd=pick(args.n_embd, n_embd), arch=args.arch)


def validate_args(args, world_size):
    """Every check of the arguments alone, before any work: one line for the first bad one."""
    c = model_config_from_args(args)
    positive = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                    micro_batch=args.micro_batch, seq_len=args.seq_len, total_batch=args.total_batch,
                    max_steps=args.max_steps, num_samples=args.num_samples, sample_tokens=args.sample_tokens,
                    steps=args.steps)
    for name, value in positive.items():
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    for name in ("hellaswag_limit", "hellaswag_batch"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1, got {getattr(args, name)} (to turn HellaSwag off: "
                            f"--hellaswag_every 0)")
    for name in ("warmup_steps", "val_every", "hellaswag_every", "sample_every", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be >= 0 (0 = off), got {getattr(args, name)}")
    if c.n_embd % c.n_head:
        raise UserError(f"--n_embd {c.n_embd} is not divisible by --n_head {c.n_head}")
    if c.arch == "modern" and (c.n_embd // c.n_head) % 2:
        raise UserError(f"--arch modern needs an even head size for RoPE; n_embd/n_head = {c.n_embd // c.n_head}")
    if c.vocab_size < GPT2_VOCAB:
        raise UserError(f"--vocab_size {c.vocab_size} is smaller than GPT-2's {GPT2_VOCAB} tokens, which the shards "
                        f"hold; use the default 50304")
    if args.seq_len > c.block_size:
        raise UserError(f"--seq_len {args.seq_len} is longer than the block size {c.block_size}")
    lrs = [("max_lr", args.max_lr)] + ([("muon_lr", args.muon_lr)] if args.optimizer == "muon" else [])
    for name, value in lrs:
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"--{name} must be a positive number, got {value}")
    for name, lo, hi in (("min_lr_ratio", 0, 1), ("weight_decay", 0, math.inf), ("grad_clip", 0, math.inf),
                         ("muon_momentum", 0, 1)):
        value = getattr(args, name)
        if not (lo <= value <= hi) or math.isnan(value):
            raise UserError(f"--{name} must be in [{lo}, {hi}], got {value}")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be in [0, 2**63), got {args.seed}")
    if args.val_every and args.val_tokens < args.seq_len:
        raise UserError(f"--val_tokens {args.val_tokens} is less than one sequence of --seq_len {args.seq_len} "
                        f"(or pass --val_every 0)")
    if args.optimizer != "muon" and args.muon_lr is not None:
        raise UserError("--muon_lr is used only with --optimizer muon")
    if args.optimizer == "muon" and not hasattr(torch.optim, "Muon"):
        raise UserError(f"--optimizer muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    per_micro_step = args.micro_batch * args.seq_len * world_size
    if args.total_batch % per_micro_step:
        options = [b for b in range(1, args.total_batch // (args.seq_len * world_size) + 1)
                   if args.total_batch % (b * args.seq_len * world_size) == 0]
        raise UserError(f"--total_batch {args.total_batch} is not a multiple of micro_batch*seq_len*world = "
                        f"{args.micro_batch}*{args.seq_len}*{world_size}; --micro_batch values that divide it: "
                        f"{', '.join(map(str, options)) or 'none (change --total_batch)'}")


# --- the run


class NothingToDo(Exception):
    """A resumed run that is already finished: say so, change nothing, exit 0."""


class Trainer:
    """One run. __init__ sets everything up and checks all input before anything is written;
    train_step is one optimizer step; run is the loop with its periodic evaluations and
    checkpoints; benchmark times train_step on random tokens."""

    def __init__(self, args, dist):
        self.args, self.dist = args, dist
        self.log = print if dist.master else (lambda *a, **k: None)
        validate_args(args, dist.world_size)
        self.device = resolve_device(args.device, dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.set_float32_matmul_precision("high")  # TF32 for any fp32 matmul left
        dist.init(self.device)
        self.dtype = choose_dtype(args.dtype, self.device)
        self.amp = autocast_ctx(self.device.type, self.dtype)
        self.compile = bool(args.compile if args.compile is not None else self.device.type == "cuda")
        self.grad_accum = args.total_batch // (args.micro_batch * args.seq_len * dist.world_size)
        self.model_config = model_config_from_args(args)

        ckpt = None
        if args.benchmark:
            self.loader = SyntheticLoader(args.seq_len, args.micro_batch, args.seed)
        else:  # every check of the log dir and the data, before the model is built or a file changes
            self.run_dir = RunDir(args.log_dir, dist.master)
            ckpt = self.open_run_dir()
            self.load_data()
            self.hellaswag = self.load_hellaswag()
            self.enc = get_encoding() if args.sample_every > 0 else None

        torch.manual_seed(args.seed)  # identical init on every rank (DDP also broadcasts)
        self.model = GPT(self.model_config).to(self.device)  # the weights: checkpoints, samples
        self.n_params = self.model.num_params()
        self.log(f"model: {args.model} arch={args.arch} {self.n_params:,} parameters, {self.dtype}, "
                 f"compile {self.compile}, {dist.world_size} process(es), {self.grad_accum} micro-steps per step")
        # what the forward passes run: the model compiled, and under torchrun wrapped in DDP
        self.runner = torch.compile(self.model) if self.compile else self.model
        if dist.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # no buffers to broadcast (the RoPE tables derive from the config), and gradients as
            # views into the all-reduce buckets: one copy of them less
            self.runner = DDP(self.runner, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                              broadcast_buffers=False, gradient_as_bucket_view=True)
        self.optimizers, self.optimizer_settings = configure_optimizers(self.model, args, self.device.type)
        self.peak_lrs = [args.max_lr, args.muon_lr][:len(self.optimizers)]
        self.log("optimizer: " + "; ".join(f"{name} lr {s['lr']:g} on {s['params']:,} params"
                                           for name, s in self.optimizer_settings.items()))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.dtype == "fp16" else None
        self.flops_per_token = flops_per_token(self.model, args.seq_len)
        self.device_name = device_name(self.device)
        self.peak = peak_flops(self.device_name, args.peak_tflops)
        self.start_step, self.elapsed_before, self.evals_done_at_start = 0, 0.0, False
        self.resumed = ckpt is not None
        if self.resumed:
            self.restore(ckpt)

    @property
    def eval_runner(self):
        """The compiled model without DDP: evaluations need no gradient sync."""
        return self.runner.module if self.dist.ddp else self.runner

    # --- setup
    def open_run_dir(self):
        """-> the checkpoint to resume from, or None for a fresh run; nothing is written yet."""
        args, run_dir = self.args, self.run_dir
        if os.path.exists(args.log_dir) and not os.path.isdir(args.log_dir):
            raise UserError(f"--log_dir {args.log_dir} is a file; pass a folder")
        if args.resume is None:
            run_dir.check_fresh()
            return None
        self.resume_path, ckpt = run_dir.find_resume(args.resume)
        # the checkpoint's model config and arguments against ours; older checkpoints were AdamW's
        theirs = {"optimizer": "adamw"} | ckpt.get("args", {}) | ckpt["config"]
        ours = vars(args) | asdict(self.model_config)
        diff = [f"{k} {theirs.get(k)} -> {ours[k]}" for k in RESUME_MUST_MATCH if theirs.get(k) != ours[k]]
        if diff:
            raise UserError(f"--resume: {self.resume_path} was trained with other settings ({'; '.join(diff)}); "
                            f"pass the same values to continue it")
        if ckpt["step"] >= args.max_steps and ckpt.get("evals_done", True):
            raise NothingToDo(f"nothing to do: {self.resume_path} is step {ckpt['step']}, the end of a run of "
                              f"--max_steps {args.max_steps}; pass a larger --max_steps to train on")
        return ckpt

    def load_data(self):
        args, dist = self.args, self.dist
        if not os.path.isdir(args.data_dir):
            raise UserError(f"data dir {args.data_dir} does not exist; run `python fineweb.py` first or pass --data_dir")
        train_paths, val_paths = find_shards(args.data_dir, "train"), find_shards(args.data_dir, "val")
        if not train_paths:
            raise UserError(f"no *_train_NNNNNN.npy shards in {args.data_dir}; run `python fineweb.py` "
                            f"(or `python fineweb.py --source FILES --local_dir {args.data_dir}`)")
        if args.val_every > 0 and not val_paths:
            raise UserError(f"no *_val_NNNNNN.npy shard in {args.data_dir}; make one with fineweb.py "
                            f"or pass --val_every 0")
        train = TokenStream(train_paths)
        self.loader = TrainLoader(train, args.seq_len, args.seed, bool(args.shuffle), seqs_per_step=args.total_batch // args.seq_len,
                                  micro_batch=args.micro_batch, rank=dist.rank, world_size=dist.world_size)
        self.val_set = ValSet(TokenStream(val_paths), args.seq_len, args.val_tokens) if args.val_every > 0 else None
        for stream in [train] + ([self.val_set.stream] if self.val_set else []):
            stream.check_token_ids(dist)
        self.log(f"data: {len(train_paths)} train shards, {train.total:,} tokens "
                 f"({self.loader.n_windows:,} sequences of {args.seq_len}); "
                 f"{args.max_steps * args.total_batch / train.total:.2f} epochs planned")

    def load_hellaswag(self):
        if self.args.hellaswag_every <= 0:
            return None
        import hellaswag

        examples = hellaswag.load_examples("val", limit=self.args.hellaswag_limit)
        cut = hellaswag.count_truncated(examples, self.model_config.block_size)
        if cut:
            self.log(f"hellaswag: {cut:,} of {len(examples):,} examples are longer than the block size "
                     f"{self.model_config.block_size}; their contexts are cut from the left")
        return examples

    def restore(self, ckpt):
        self.model.load_state_dict(ckpt["model"])
        states = ckpt["optimizers"] if "optimizers" in ckpt else [ckpt["optimizer"]]  # older checkpoints: AdamW only
        for optimizer, state in zip(self.optimizers, states, strict=True):
            optimizer.load_state_dict(state)
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_step, self.elapsed_before = ckpt["step"], ckpt.get("elapsed", 0.0)
        self.evals_done_at_start = ckpt.get("evals_done", False)

    def prepare_files(self):
        """The first writes of the run, after every check has passed."""
        run_dir = self.run_dir
        if self.dist.master:
            os.makedirs(self.args.log_dir, exist_ok=True)
            run_dir.remove_stale_temps(self.log)
            if self.resumed:
                run_dir.cut_back(self.start_step, keep_evals=self.evals_done_at_start)
                self.log(f"resumed from {self.resume_path} at step {self.start_step}")
            else:
                moved = run_dir.start_fresh()
                if moved:
                    self.log(f"note: moved the logs of an earlier run without checkpoints to {moved}")
        previous = run_dir.previous_config() if self.resumed else {}
        config = dict(vars(self.args))
        config.update(
            model_config=asdict(self.model_config), n_params=self.n_params, world_size=self.dist.world_size,
            grad_accum_steps=self.grad_accum, device_name=self.device_name,
            n_gpus=self.dist.world_size if self.device.type == "cuda" else 0, dtype_resolved=self.dtype,
            compile_resolved=self.compile, torch_version=torch.__version__, optimizer_settings=self.optimizer_settings,
            started_at=previous.get("started_at", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            tokens_per_step=self.args.total_batch, train_tokens=self.loader.stream.total,
            val_tokens_used=self.val_set.n_windows * self.args.seq_len if self.val_set else 0,
            resumed_from=previous.get("resumed_from", []) + ([self.resume_path] if self.resumed else []),
        )
        run_dir.write_config(config)
        self.dist.barrier()

    # --- one optimizer step: grad_accum micro-steps, one all-reduce, clip, update
    def train_step(self, step):
        args, dist = self.args, self.dist
        self.runner.train()
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=self.device)
        for micro_step in range(self.grad_accum):
            x, y = batch_to_device(*self.loader.batch(step, micro_step), self.device)
            # DDP must know BEFORE the forward whether this backward all-reduces; only the last
            # micro-step does (build-nanogpt PR #30 fixed the same ordering bug)
            last = micro_step == self.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not dist.ddp) else self.runner.no_sync()
            with sync:
                with self.amp:
                    _, loss = self.runner(x, y)
                loss = loss / self.grad_accum  # each micro-batch has the same number of tokens
                loss_accum += loss.detach()
                (self.scaler.scale(loss) if self.scaler else loss).backward()
        dist.all_reduce(loss_accum, op="avg")
        if self.scaler:
            for optimizer in self.optimizers:
                self.scaler.unscale_(optimizer)
        clip = args.grad_clip if args.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        factor = lr_factor(step, args.warmup_steps, args.max_steps, args.min_lr_ratio)
        for optimizer, peak in zip(self.optimizers, self.peak_lrs):
            for group in optimizer.param_groups:
                group["lr"] = peak * factor
        loss_value, norm_value = torch.stack([loss_accum, norm.to(loss_accum)]).tolist()  # one host sync
        if not math.isfinite(loss_value) or (not self.scaler and not math.isfinite(norm_value)):
            return loss_value, norm_value, args.max_lr * factor, False  # do not apply a poisoned update
        for optimizer in self.optimizers:
            self.scaler.step(optimizer) if self.scaler else optimizer.step()
        if self.scaler:
            self.scaler.update()
        return loss_value, norm_value, args.max_lr * factor, True

    def benchmark(self):
        """--benchmark: --steps steps of the real train_step on random tokens; median tokens/s of
        the steps after the first third (compile and warm-up excluded)."""
        args = self.args
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for step in range(args.steps):
            synchronize(self.device)
            t0 = time.perf_counter()
            loss, norm, lr, ok = self.train_step(step)
            synchronize(self.device)
            times.append(time.perf_counter() - t0)
            self.log(f"bench step {step}: loss {loss:.4f} dt {times[-1] * 1000:.0f} ms")
        result = speed_figures(times, args.total_batch, self.flops_per_token, self.peak, self.device, self.compile,
                               world_size=self.dist.world_size)
        result.update(
            gpu=self.device_name, world_size=self.dist.world_size, dtype=self.dtype, compile=self.compile,
            arch=args.arch, optimizer=args.optimizer, n_params=self.n_params, micro_batch=args.micro_batch,
            seq_len=args.seq_len, total_batch=args.total_batch, grad_accum=self.grad_accum, steps=args.steps,
            torch=torch.__version__)
        if self.dist.master:
            print(json.dumps(result))
        return result

    # --- the loop
    def run(self):
        """Train to --max_steps; -> the exit code (0, or 128 + signal after a stop request)."""
        args, dist = self.args, self.dist
        self.prepare_files()
        stop = StopRequest(dist, self.log, self.run_dir.last_checkpoint)
        stop.install()
        should_stop = lambda: dist.any(stop.requested)  # noqa: E731 (collective: every rank calls it)
        self.t_start, self.timings, self.last_val, self.last_hella = time.time(), {}, None, None
        dt_ema = None
        for step in range(self.start_step, args.max_steps + 1):
            last = step == args.max_steps
            if not (step == self.start_step and self.evals_done_at_start):
                try:
                    self.periodic_tasks(step, last, should_stop)
                except Interrupted:  # a stop during an evaluation: save this step, redo its evals on resume
                    return self.stop_here(step, stop)
            if last:
                self.run_dir.log(step, elapsed=self.elapsed())
                self.log(self.summary(step))
                return 0
            t0 = time.time()
            loss, norm, lr, ok = self.train_step(step)
            if not ok:
                raise UserError(f"loss is {loss} (grad norm {norm}) at step {step}; the update was not applied "
                                f"and no checkpoint was written; {self.divergence_hint()}")
            synchronize(self.device)
            dt = time.time() - t0
            dt_ema = dt if dt_ema is None else 0.9 * dt_ema + 0.1 * dt
            tok_s = args.total_batch / dt
            mfu = self.flops_per_token * tok_s / (self.peak * dist.world_size) if self.peak else None
            eta = self.eta(step, dt_ema)
            self.log(f"step {step:5d} | loss {loss:.6f} | lr {lr:.4e} | norm {norm:.4f} | dt {dt * 1000:.0f}ms | "
                     f"tok/s {tok_s:,.0f}" + (f" | mfu {mfu:.1%}" if mfu is not None else "") +
                     f" | eta {eta / 3600:.0f}h{eta % 3600 / 60:02.0f}m")
            self.run_dir.log(step, train=loss, lr=lr, norm=norm, dt=dt * 1000, **{"tok/s": tok_s}, mfu=mfu,
                             elapsed=self.elapsed())
            if should_stop() and step + 1 < args.max_steps:
                self.check_weights(step + 1)
                return self.stop_here(step + 1, stop)

    def periodic_tasks(self, step, last, should_stop):
        """What is due at a step, in this order: validation, HellaSwag, samples, checkpoint. Each
        also runs once more at the very end; the weights are checked first."""
        args = self.args

        def due(every):
            return every > 0 and (step % every == 0 or last)

        ckpt_due = step > self.start_step and (due(args.checkpoint_every) or last)
        val_due, hella_due = due(args.val_every), self.hellaswag is not None and due(args.hellaswag_every)
        samples_due = self.enc is not None and step > 0 and due(args.sample_every)
        if step > self.start_step and (ckpt_due or val_due or hella_due or samples_due):
            self.check_weights(step)  # never evaluate, sample from or save diverged weights
        if val_due:
            with self.timed("val"):
                self.last_val = evaluate_val(self.eval_runner, self.val_set, self.dist, args.micro_batch, self.device,
                                             self.amp, should_stop)
            self.log(f"step {step:5d} | val loss {self.last_val:.4f}")
            self.run_dir.log(step, val=self.last_val)
        if hella_due:
            with self.timed("hella"):
                result = self.run_hellaswag(should_stop)
            self.last_hella = result["acc_norm"]
            self.log(f"step {step:5d} | hellaswag {result['num_correct_norm']}/{result['examples']} "
                     f"acc_norm {result['acc_norm']:.4f} acc {result['acc']:.4f}")
            self.run_dir.log(step, hella=result["acc_norm"], hella_acc=result["acc"])
        if samples_due and self.dist.master:  # cheap; one rank is enough
            with self.timed("samples"):
                texts = generate_samples(self.model, self.enc, args.sample_prompt, args.num_samples,
                                         args.sample_tokens, args.seed + step, self.device, self.amp)
            for i, text in enumerate(texts):
                self.log(f"sample {i}: {text}")
            self.run_dir.write_samples(step, texts)
        if ckpt_due:
            with self.timed("ckpt"):
                self.save_checkpoint(step, evals_done=True)

    def run_hellaswag(self, should_stop):
        import hellaswag

        return hellaswag.evaluate(self.eval_runner, self.hellaswag, self.device, dtype=self.dtype,
                                  rank=self.dist.rank, world_size=self.dist.world_size,
                                  batch_size=self.args.hellaswag_batch, max_len=self.model_config.block_size,
                                  should_stop=should_stop)

    @contextlib.contextmanager
    def timed(self, task):
        """Remembers how long each periodic task takes, for the ETA."""
        t0 = time.time()
        yield
        self.timings[task] = time.time() - t0

    def eta(self, step, dt_ema):
        """Seconds left: the remaining steps at the recent step time, plus every evaluation and
        checkpoint still due at its last measured duration."""
        args, end = self.args, self.args.max_steps
        every = {"val": args.val_every, "hella": args.hellaswag_every, "samples": args.sample_every,
                 "ckpt": args.checkpoint_every}
        evals = sum(seconds * count_due(every[task], step, end) for task, seconds in self.timings.items())
        return dt_ema * (end - step - 1) + evals

    def elapsed(self):
        return self.elapsed_before + time.time() - self.t_start

    def summary(self, step):
        tokens = step * self.args.total_batch
        tokens = f"{tokens / 1e9:.2f}B" if tokens >= 1e8 else f"{tokens / 1e6:.2f}M" if tokens >= 1e5 else f"{tokens:,}"
        wall = self.elapsed()
        parts = [f"done: {step:,} steps, {tokens} tokens in {wall / 3600:.0f}h{wall % 3600 / 60:02.0f}m"]
        if self.last_val is not None:
            parts.append(f"final val loss {self.last_val:.4f}")
        if self.last_hella is not None:
            parts.append(f"HellaSwag acc_norm {self.last_hella:.4f}")
        parts.append(f"last checkpoint {self.run_dir.checkpoint_path(step)}")
        return "; ".join(parts)

    def stop_here(self, step, stop):
        self.save_checkpoint(step, evals_done=False)
        self.log(f"stopped at step {step}; continue with the same command plus --resume")
        return 128 + stop.signum

    @torch.no_grad()
    def check_weights(self, step):
        """A finite training loss says nothing about the update that followed it: one no-grad forward
        on this step's first micro-batch makes sure the current weights still give a finite loss
        before they are evaluated, sampled from or checkpointed."""
        x, y = self.loader.batch(step, 0)
        with self.amp:
            _, loss = self.model(x.to(self.device), y.to(self.device))
        loss = loss.item()
        if self.dist.any(not math.isfinite(loss)):
            raise UserError(f"the weights diverged after step {step - 1} (loss {loss} on a training batch); "
                            f"no checkpoint was written; {self.divergence_hint()}")

    def divergence_hint(self):
        last = self.run_dir.last_checkpoint()
        return f"resume from {last} with a lower --max_lr" if last else "lower --max_lr"

    def save_checkpoint(self, step, evals_done):
        state = {
            "model": self.model.state_dict(),  # no _orig_mod./module. prefixes
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "step": step,
            "evals_done": evals_done,  # the evaluations of `step` ran before this save
            "config": asdict(self.model_config),
            "args": dict(vars(self.args)),
            "elapsed": self.elapsed(),
            "val_loss": self.last_val,
        }
        error = self.run_dir.save_checkpoint(step, state)
        if self.dist.any(error is not None):  # every rank stops, rank 0 says why
            raise UserError(error or "rank 0 could not write a checkpoint")
        self.log(f"saved checkpoint {self.run_dir.checkpoint_path(step)}")


# -----------------------------------------------------------------------------
# 4. Entry points


def export_checkpoint(path, out_dir):
    """--export: one of our checkpoints -> a transformers GPT2LMHeadModel folder."""
    out_dir = out_dir or os.path.splitext(path)[0] + "_hf"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--export_dir {out_dir} is a file; pass a folder")
    model = load_checkpoint_model(path)
    if model.config.arch != "gpt2":
        raise UserError("--export: only --arch gpt2 checkpoints map onto transformers' GPT2LMHeadModel")
    model.save_pretrained(out_dir)
    print(f"exported {path} to {out_dir} (load with transformers.GPT2LMHeadModel.from_pretrained)")


def main(argv=None):
    """-> the exit code. Every UserError of any rank ends here: rank 0 prints it as one line (the
    other ranks met the same error: the checks and the loop's failures are collective) -> 1."""
    args = get_args(argv)
    dist = Dist()
    try:
        if args.export:
            export_checkpoint(args.export, args.export_dir)
            return 0
        resolve_defaults(args, dist.world_size)
        trainer = Trainer(args, dist)
        if args.benchmark:
            trainer.benchmark()
            return 0
        return trainer.run()
    except NothingToDo as e:
        if dist.master:
            print(e)
        return 0
    except UserError as e:
        if dist.master:
            print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception:
        if dist.ddp and dist.dead_peers():  # a collective failed because another rank died first:
            return 1  # that rank's error is the one to read, and torchrun points to it
        raise
    finally:
        dist.destroy()


if __name__ == "__main__":
    # hellaswag.py imports this file as `train_gpt2`: make that this very module, so both share
    # one UserError class (and one copy of everything else)
    sys.modules.setdefault("train_gpt2", sys.modules[__name__])
    sys.exit(main())
