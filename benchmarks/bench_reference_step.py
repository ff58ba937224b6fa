"""
The plain reference training step: build-nanogpt's loop around our model, so the trainer's
--benchmark figures have a baseline measured on the same card in the same call.

    python benchmarks/bench_reference_step.py --micro_batch 16            # GPU: compiled, bf16
    python benchmarks/bench_reference_step.py --micro_batch 2 --seq_len 64 --n_layer 2 --n_head 2 \
        --n_embd 64 --block_size 64 --device cpu --dtype fp32 --compile 0 --steps 3   # CPU smoke

The same as `train_gpt2.py --benchmark`: the model class and its init (train_gpt2.GPT, arch gpt2,
vocab 50304, seed 1337), random tokens, one micro-step per step, the timing and the JSON keys
(train_gpt2.speed_figures). build-nanogpt's instead of ours: the loss is F.cross_entropy on the
full logits cast to fp32, inside the compiled module; the loop keeps `logits` alive; batches are
plain `x.to(device)` copies of pageable tensors; fused AdamW (betas 0.9/0.95, eps 1e-8, weight
decay 0.1 on 2-D tensors); grad clip 1.0; one `.item()` per step. The last stdout line is one JSON
object. Out of CUDA memory it prints one line `error: out of memory ...` (as the trainer does;
gpu_check.py records the part as oom) and exits 1.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hellaswag  # noqa: E402  (its out-of-memory test)
import train_gpt2  # noqa: E402


class NanoGPTLoss(nn.Module):
    """Our GPT with build-nanogpt's loss: fp32 cross-entropy over the full (B*T, V) logits.
    Wrapped in one module so torch.compile sees the model and the loss as one graph."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        logits, _ = self.model(x)  # (B, T, V); no targets: our forward returns the logits only
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))
        return logits, loss


def configure_optimizer(model, weight_decay, lr, fused):
    """build-nanogpt's AdamW: decay the tensors with >= 2 dims (matmuls, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)


def warmup_lr(step, max_lr=6e-4, warmup_steps=715):
    """build-nanogpt's schedule during warmup (a benchmark never leaves it); speed does not
    depend on the value, but the loop sets it every step as the real one does."""
    return max_lr * (step + 1) / warmup_steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in (("micro_batch", 16), ("seq_len", 1024), ("steps", 20), ("n_layer", 12),
                          ("n_head", 12), ("n_embd", 768), ("block_size", 1024), ("seed", 1337)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="auto: bf16 on CUDA")
    p.add_argument("--compile", type=int, default=None, choices=[0, 1], help="default: 1 on CUDA")
    args = p.parse_args(argv)
    device = train_gpt2.resolve_device(args.device)
    try:
        result = measure(args, device)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        print(oom_message(device, args.micro_batch, args.seq_len), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


def is_out_of_memory(exc):
    """hellaswag.is_out_of_memory anywhere in the cause chain: torch.compile wraps the error in
    one of its own."""
    for _ in range(20):  # a chain is a few errors long
        if exc is None:
            return False
        if hellaswag.is_out_of_memory(exc) or "CUDA out of memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def oom_message(device, micro_batch, seq_len):
    """One line instead of a traceback: what did not fit, on which card, what to try instead."""
    card = train_gpt2.device_name(device)
    if device.type == "cuda":
        card += f", {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB"
    smaller = [d for d in range(micro_batch - 1, 0, -1) if micro_batch % d == 0][:3]
    advice = (f"try --micro_batch {' or '.join(map(str, smaller))}" if smaller
              else "the model alone does not fit")
    return (f"error: out of memory at micro-batch {micro_batch} x {seq_len} tokens on {card}; "
            f"this step has no gradient accumulation, {advice}")


def measure(args, device):
    """The benchmark itself (the plain loop); -> the result dict."""
    on_cuda = device.type == "cuda"
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if on_cuda else "fp32")
    use_compile = bool(args.compile if args.compile is not None else on_cuda)
    if on_cuda:
        torch.cuda.set_device(device)
        torch.set_float32_matmul_precision("high")  # as build-nanogpt: TF32 for fp32 matmuls
    torch.manual_seed(args.seed)  # the trainer's init: same seed, same module order
    config = train_gpt2.GPTConfig(block_size=args.block_size, vocab_size=50304, arch="gpt2",
                                  n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    raw_model = train_gpt2.GPT(config).to(device)
    model = torch.compile(NanoGPTLoss(raw_model)) if use_compile else NanoGPTLoss(raw_model)
    optimizer = configure_optimizer(raw_model, 0.1, warmup_lr(0), fused=on_cuda)
    generator = torch.Generator().manual_seed(args.seed)
    B, T = args.micro_batch, args.seq_len
    print(f"reference step: {raw_model.num_params():,} params, B={B} T={T}, device {device}, "
          f"dtype {dtype}, compile {use_compile}", file=sys.stderr)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    train_gpt2.synchronize(device)
    for step in range(args.steps):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        # build-nanogpt's DataLoaderLite: B*T+1 consecutive tokens in pageable memory
        buf = torch.randint(0, train_gpt2.GPT2_VOCAB, (B * T + 1,), generator=generator)
        x, y = buf[:-1].view(B, T).to(device), buf[1:].view(B, T).to(device)  # (B, T)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            logits, loss = model(x, y)  # logits stays referenced until the next step, as there
        loss.backward()
        torch.nn.utils.clip_grad_norm_(raw_model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = warmup_lr(step)
        optimizer.step()
        loss_value = loss.item()  # the one host sync of the step (waits for the optimizer too)
        train_gpt2.synchronize(device)
        times.append(time.perf_counter() - t0)
        print(f"reference step {step}: loss {loss_value:.4f} dt {times[-1] * 1000:.0f} ms",
              file=sys.stderr)
    card = train_gpt2.device_name(device)
    flops = train_gpt2.flops_per_token(raw_model, T)
    return {"impl": "reference", **train_gpt2.speed_figures(
        times, B * T, flops, train_gpt2.peak_flops(card), device, use_compile),
        "gpu": card, "world_size": 1, "dtype": dtype, "compile": use_compile, "arch": "gpt2",
        "n_params": raw_model.num_params(), "micro_batch": B, "seq_len": T, "total_batch": B * T,
        "grad_accum": 1, "steps": args.steps, "torch": torch.__version__,
        "loss_last": round(loss_value, 4)}


if __name__ == "__main__":
    sys.exit(main())
