"""
HellaSwag eval speed: the anchor's one-example-per-forward loop (hellaswag.evaluate_reference,
uncompiled, as build-nanogpt runs it) vs the batched evaluator (hellaswag.evaluate, optionally on
a torch.compile'd model), same model, same device, same dtype, in one process. The last stdout
line is one JSON object: examples/s of both, the speedup and whether the scores/predictions agree.

    # GPU (the intended use): full val set, GPT-2 124M shape with random weights, bf16 autocast, compile
    python benchmarks/bench_hellaswag.py
    python benchmarks/bench_hellaswag.py --model gpt2          # real weights (HF hub or a local transformers dir)
    # CPU smoke run: a tiny model, a few examples
    python benchmarks/bench_hellaswag.py --device cpu --compile 0 --limit 40 --n_layer 2 --n_head 2 --n_embd 64

The batched evaluator runs twice: "first_call_seconds" includes torch.compile's compile time,
"seconds" (used for the speedup) is the second, steady-state call, as in training where the
eval runs every 250 steps. With bf16 autocast the two evaluators' logits are rounded differently
(different matmul shapes), so a near-tie can flip an example; --dtype fp32 compares exactly.
Target on one H100: >= 10x and < 10 s for the 10,042 val examples.

Keys of the JSON line:
    device                 GPU name on CUDA, else the device ("cpu", "mps")
    torch                  torch.__version__
    model                  "random GPT (12L 12H 768C, block 1024)" or the --model name
    examples               examples evaluated
    dtype                  the --dtype name after auto: bf16, fp16 or fp32
    autocast               the same as a torch dtype name (bfloat16, float16, float32 = no autocast)
    compile                whether the batched evaluator's model was torch.compile'd
    batch_size, bucket_multiple   as given (null = the evaluator's device default)
    max_len                longest row fed to the model (the block size)
    truncated              examples with a row longer than max_len (context cut from the left)
    reference              {seconds, examples_per_s, acc, acc_norm} of evaluate_reference
    batched                {seconds, first_call_seconds, examples_per_s, acc, acc_norm} of evaluate
    speedup                reference.seconds / batched.seconds (steady state)
    speedup_first_call     reference.seconds / batched.first_call_seconds
    acc_norm_identical, acc_identical   the two evaluators got the same counts
    predictions_identical  examples with the same (pred, pred_norm) in both
    predictions_differing  examples - predictions_identical
"""

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import hellaswag  # noqa: E402
import train_gpt2  # noqa: E402  (only for the GPT model and the card's name)


def build_model(args, device):
    if args.model:  # any transformers causal LM, as `python hellaswag.py --model` loads it
        model, name = hellaswag.load_model(args.model, device), args.model
    else:
        torch.manual_seed(args.seed)
        cfg = train_gpt2.GPTConfig(block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                                   n_embd=args.n_embd)
        model = train_gpt2.GPT(cfg).to(device)
        name = f"random GPT ({args.n_layer}L {args.n_head}H {args.n_embd}C, block {args.block_size})"
    return model.eval(), name, sum(p.numel() for p in model.parameters())


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="HF GPT-2 name or local transformers dir (None: random weights)")
    p.add_argument("--n_layer", type=int, default=12, help="random model: layers (124M shape by default)")
    p.add_argument("--n_head", type=int, default=12, help="random model: heads")
    p.add_argument("--n_embd", type=int, default=768, help="random model: width")
    p.add_argument("--block_size", type=int, default=1024, help="random model: block size = max_len")
    p.add_argument("--seed", type=int, default=0, help="random model: init seed")
    p.add_argument("--split", default="val", choices=["val", "train"], help="HellaSwag split")
    p.add_argument("--limit", type=int, default=None, help="first N examples (None: all)")
    p.add_argument("--data_dir", default=None, help="cache dir of the jsonl files (None: $HELLASWAG_DIR or hellaswag/)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", default="auto", choices=list(hellaswag.AUTOCAST), help="as hellaswag.py's --dtype")
    p.add_argument("--batch_size", type=int, default=None,
                   help="examples per forward of the batched evaluator (None: 32 on a GPU, 8 on cpu)")
    p.add_argument("--bucket_multiple", type=int, default=None, help="row length rounding (None: 32 on a GPU, 8 on cpu)")
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
    model, name, n_params = build_model(args, device)
    max_len = hellaswag.model_max_len(model)
    n_cut = hellaswag.count_truncated(examples, max_len)
    print(f"{len(examples)} examples ({n_cut} cut to {max_len} tokens), {name}, {n_params / 1e6:.1f}M params, "
          f"device {device}, dtype {dtype}, compile {use_compile}, torch {torch.__version__}", file=sys.stderr)

    ref = hellaswag.evaluate_reference(model, examples, device, autocast=amp, max_len=max_len,
                                       return_predictions=True, progress=True)
    fast_model = torch.compile(model) if use_compile else model
    kwargs = {"autocast": amp, "max_len": max_len, "batch_size": args.batch_size,
              "bucket_multiple": args.bucket_multiple, "return_predictions": True}
    first = hellaswag.evaluate(fast_model, examples, device, progress=True, **kwargs)
    fast = hellaswag.evaluate(fast_model, examples, device, **kwargs)

    n = len(examples)
    same_pred = sum(a == b for a, b in zip(ref["predictions"], fast["predictions"]))
    out = {
        "device": train_gpt2.device_name(device),
        "torch": torch.__version__,
        "model": name,
        "examples": n,
        "dtype": dtype,
        "autocast": {"bf16": "bfloat16", "fp16": "float16"}.get(dtype, "float32"),
        "compile": use_compile,
        "batch_size": args.batch_size,
        "bucket_multiple": args.bucket_multiple,
        "max_len": max_len,
        "truncated": n_cut,
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


def main(argv=None):
    try:
        run(argv)
    except hellaswag.HellaSwagError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
