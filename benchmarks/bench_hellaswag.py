"""
HellaSwag eval speed: the anchor's one-example-per-forward loop (hellaswag.evaluate_reference,
uncompiled, as build-nanogpt runs it) vs the batched evaluator (hellaswag.evaluate, optionally on
a torch.compile'd model), same model, device and dtype, in one process.

    python benchmarks/bench_hellaswag.py     # GPU: full val set, GPT-2 124M shape, random weights
    python benchmarks/bench_hellaswag.py --model gpt2       # real weights (a transformers name/dir)
    python benchmarks/bench_hellaswag.py --device cpu --compile 0 --limit 40 --n_layer 2 \
        --n_head 2 --n_embd 64                               # CPU smoke run

The batched evaluator runs twice: "first_call_seconds" includes torch.compile's compile,
"seconds" (the speedup's) is the second, steady-state call, as in training where the eval runs
every 250 steps. Under bf16 autocast the two evaluators round differently (different matmul
shapes), so a near-tie can flip an example; --dtype fp32 compares exactly. Target on one H100:
>= 10x and < 10 s for the 10,042 val examples. The last stdout line is one JSON object: per
evaluator its seconds, examples/s, acc and acc_norm; the speedups; whether the counts agree, and
how many examples got the same (pred, pred_norm) from both.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hellaswag  # noqa: E402
import train_gpt2  # noqa: E402  (the GPT model and the card's name)


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None,
                   help="a transformers causal LM, name or dir (None: a random GPT, below)")
    p.add_argument("--n_layer", type=int, default=12, help="random GPT (124M shape by default)")
    p.add_argument("--n_head", type=int, default=12)
    p.add_argument("--n_embd", type=int, default=768)
    p.add_argument("--block_size", type=int, default=1024, help="random GPT: = max_len")
    p.add_argument("--seed", type=int, default=0, help="random GPT: init seed")
    p.add_argument("--split", default="val", choices=["val", "train"])
    p.add_argument("--limit", type=int, default=None, help="the first N examples (None: all)")
    p.add_argument("--data_dir", default=None, help="None: $HELLASWAG_DIR or hellaswag/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=list(hellaswag.AUTOCAST),
                   help="as hellaswag.py's --dtype")
    p.add_argument("--batch_size", type=int, default=None,
                   help="examples per forward of the batched evaluator (None: its device default)")
    p.add_argument("--bucket_multiple", type=int, default=None,
                   help="row length rounding (None: its device default)")
    p.add_argument("--compile", type=int, default=None, choices=[0, 1],
                   help="torch.compile for the batched evaluator (None: 1 on cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p.parse_args(argv)


def run(argv=None):
    args = get_args(argv)
    device = hellaswag.resolve_device(args.device)
    dtype, amp = hellaswag.choose_autocast(args.dtype, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    use_compile = bool(args.compile) if args.compile is not None else device.type == "cuda"
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as the trainer: TF32 for fp32 runs' matmuls
    examples = hellaswag.load_examples(args.split, args.data_dir, args.limit)
    if args.model:  # as `python hellaswag.py --model` loads it
        model, name = hellaswag.load_model(args.model, device), args.model
    else:
        torch.manual_seed(args.seed)
        model = train_gpt2.GPT(train_gpt2.GPTConfig(
            block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
            n_embd=args.n_embd)).to(device)
        name = (f"random GPT ({args.n_layer}L {args.n_head}H {args.n_embd}C, "
                f"block {args.block_size})")
    model.eval()
    max_len = hellaswag.model_max_len(model)
    n_cut = hellaswag.count_truncated(examples, max_len)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(examples)} examples ({n_cut} cut to {max_len} tokens), {name}, "
          f"{n_params / 1e6:.1f}M params, device {device}, dtype {dtype}, compile {use_compile}, "
          f"torch {torch.__version__}", file=sys.stderr)

    ref = hellaswag.evaluate_reference(model, examples, device, autocast=amp, max_len=max_len,
                                       return_predictions=True, progress=True)
    fast_model = torch.compile(model) if use_compile else model
    kwargs = {"autocast": amp, "max_len": max_len, "batch_size": args.batch_size,
              "bucket_multiple": args.bucket_multiple, "return_predictions": True}
    first = hellaswag.evaluate(fast_model, examples, device, progress=True, **kwargs)
    fast = hellaswag.evaluate(fast_model, examples, device, **kwargs)

    n = len(examples)
    same = sum(a == b for a, b in zip(ref["predictions"], fast["predictions"]))

    def figures(r, **extra):
        return {"seconds": round(r["seconds"], 3), **extra, "acc": r["acc"],
                "examples_per_s": round(n / r["seconds"], 2), "acc_norm": r["acc_norm"]}

    print(json.dumps({
        "device": train_gpt2.device_name(device), "torch": torch.__version__, "model": name,
        "examples": n, "dtype": dtype, "compile": use_compile, "batch_size": args.batch_size,
        "bucket_multiple": args.bucket_multiple, "max_len": max_len, "truncated": n_cut,
        "reference": figures(ref),
        "batched": figures(fast, first_call_seconds=round(first["seconds"], 3)),
        "speedup": round(ref["seconds"] / fast["seconds"], 2),
        "speedup_first_call": round(ref["seconds"] / first["seconds"], 2),
        "acc_norm_identical": ref["num_correct_norm"] == fast["num_correct_norm"],
        "acc_identical": ref["num_correct"] == fast["num_correct"],
        "predictions_identical": same, "predictions_differing": n - same}))


def main(argv=None):
    try:
        run(argv)
    except hellaswag.HellaSwagError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
