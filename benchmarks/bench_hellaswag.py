"""
HellaSwag eval speed: the anchor's one-example-per-forward loop (hellaswag.evaluate_reference,
uncompiled, as build-nanogpt runs it) vs the batched evaluator (hellaswag.evaluate, optionally on
a torch.compile'd model), same model, same device, same dtype, in one process. Prints one JSON
line: examples/s of both, the speedup and whether the scores/predictions are identical.

    # GPU (the intended use): full val set, GPT-2 124M shape with random weights, bf16 autocast, compile
    python benchmarks/bench_hellaswag.py
    python benchmarks/bench_hellaswag.py --model gpt2          # real weights (needs the HF hub or a local dir)
    # CPU smoke run
    python benchmarks/bench_hellaswag.py --limit 40 --device cpu --compile 0

The batched evaluator runs twice: "first_call_seconds" includes torch.compile's compile time,
"seconds" (used for the speedup) is the second, steady-state call, as in training where the
eval runs every 250 steps. With bf16 autocast the two evaluators' logits are rounded differently
(different matmul shapes), so a near-tie can flip an example; --dtype float32 compares exactly.
Target on one H100: >= 10x and < 10 s for the 10,042 val examples.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hellaswag  # noqa: E402


def build_model(args, device):
    import train_gpt2
    if args.model:
        model = train_gpt2.GPT.from_pretrained(args.model)
        name = args.model
    else:
        torch.manual_seed(args.seed)
        cfg = train_gpt2.GPTConfig(block_size=1024, vocab_size=50304, n_layer=args.n_layer,
                                   n_head=args.n_head, n_embd=args.n_embd)
        model = train_gpt2.GPT(cfg)
        name = f"random GPT ({args.n_layer}L {args.n_head}H {args.n_embd}C)"
    n_params = sum(p.numel() for p in model.parameters())
    return model.to(device).eval(), name, n_params


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF GPT-2 name or local transformers dir (default: random weights)")
    p.add_argument("--n_layer", type=int, default=12)
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="val")
    p.add_argument("--limit", type=int, default=None, help="first N examples (default: all)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="auto (bf16 autocast on cuda), float32, bfloat16")
    p.add_argument("--batch_size", type=int, default=None,
                   help="examples per forward of the batched evaluator (default 32 on a GPU, 8 on cpu)")
    p.add_argument("--bucket_multiple", type=int, default=None, help="row length rounding (default 32 on a GPU, 8 on cpu)")
    p.add_argument("--compile", type=int, default=None, help="compile for the batched evaluator (default: 1 on cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()

    import train_gpt2
    device = train_gpt2.choose_device(args.device, local_rank=0)
    device_type = torch.device(device).type
    if args.threads:
        torch.set_num_threads(args.threads)
    use_compile = bool(args.compile) if args.compile is not None else device_type == "cuda"
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" or (args.dtype == "auto" and device_type == "cuda") else None
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # only affects fp32 runs
        torch.backends.cudnn.allow_tf32 = True

    examples = hellaswag.load_examples(args.split, args.data_dir, args.limit)
    model, name, n_params = build_model(args, device)
    print(f"{len(examples)} examples, {name}, {n_params / 1e6:.1f}M params, device {device}, "
          f"autocast {autocast_dtype}, compile {use_compile}", file=sys.stderr)

    ref = hellaswag.evaluate_reference(model, examples, device, autocast_dtype=autocast_dtype,
                                       return_predictions=True, progress=True)
    fast_model = torch.compile(model) if use_compile else model
    kwargs = dict(batch_size=args.batch_size, bucket_multiple=args.bucket_multiple,
                  autocast_dtype=autocast_dtype, return_predictions=True)
    first = hellaswag.evaluate(fast_model, examples, device, progress=True, **kwargs)
    fast = hellaswag.evaluate(fast_model, examples, device, **kwargs)

    n = len(examples)
    same_pred = sum(a == b for a, b in zip(ref["predictions"], fast["predictions"]))
    out = {
        "device": torch.cuda.get_device_name(device) if device_type == "cuda" else device,
        "model": name,
        "examples": n,
        "autocast": str(autocast_dtype).replace("torch.", "") if autocast_dtype else "float32",
        "compile": use_compile,
        "batch_size": args.batch_size,
        "bucket_multiple": args.bucket_multiple,
        "reference": {"seconds": round(ref["seconds"], 3), "examples_per_s": round(n / ref["seconds"], 2),
                      "acc": ref["acc"], "acc_norm": ref["acc_norm"]},
        "batched": {"seconds": round(fast["seconds"], 3), "first_call_seconds": round(first["seconds"], 3),
                    "examples_per_s": round(n / fast["seconds"], 2), "acc": fast["acc"], "acc_norm": fast["acc_norm"]},
        "speedup": round(ref["seconds"] / fast["seconds"], 2),
        "speedup_first_call": round(ref["seconds"] / first["seconds"], 2),
        "acc_norm_identical": ref["num_correct_norm"] == fast["num_correct_norm"],
        "acc_identical": ref["num_correct"] == fast["num_correct"],
        "predictions_identical": same_pred,
        "predictions_differing": n - same_pred,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
