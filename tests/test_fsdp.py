"""
--fsdp (FSDP2 sharding) and --activation_checkpointing, on CPU: gloo, torchrun with 2 processes,
the tiny model of the other trainer tests, fp32.

  * FSDP trains like DDP: the same losses and grad norms within 1e-5 over 16 steps that clip the
    gradient at most steps, the same final weights;
  * an FSDP run continued by the same command from a checkpoint equals the uninterrupted one bit
    for bit;
  * checkpoints are one file in one format: a DDP checkpoint continues under --fsdp, an FSDP
    checkpoint exports to transformers with the same logits;
  * two machines (torchrun --nnodes 2, simulated on this one) continue a DDP run like one;
  * each rank holds about 1/world of the parameter and optimizer-state elements;
  * activation checkpointing gives the same loss and gradients and saves fewer activations.
"""

import json
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import train_gpt2 as tg
from helpers import (REPO, RUN_TIMEOUT, TINY, checkpoints, export_logit_gap, ok, record_map,
                     records, run_cli, state_dicts_equal, train_cmd, work_dir)

# samples and HellaSwag too: under FSDP every rank must join every forward (5 examples in batches
# of 2 over 2 ranks: rank 1 has a slot with nothing to score). At this LR the grad norm stays above
# --grad_clip 1.0 for 12 of the 16 steps: FSDP must clip by DDP's factor (a higher LR clips more,
# but turns float reordering into visible differences within a few steps)
FSDP_ARGS = ["--max_steps", "16", "--max_lr", "5e-4", "--checkpoint_every", "4", "--val_every", "8",
             "--sample_every", "8", "--num_samples", "1", "--sample_tokens", "4",
             "--hellaswag_every", "8", "--hellaswag_limit", "5", "--hellaswag_batch", "2"]
LAST = "model_00016.pt"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    yield from work_dir(tmp_path_factory, "fsdp")


def run_args(work, name, *extra):
    return [*TINY, "--data_dir", work["data"], "--log_dir", work["root"] / name, *FSDP_ARGS, *extra]


@pytest.fixture(scope="module")
def ddp(work):
    ok(run_cli(work["env"], *run_args(work, "ddp"), ddp=True))
    return work["root"] / "ddp"


@pytest.fixture(scope="module")
def fsdp(work):
    ok(run_cli(work["env"], *run_args(work, "fsdp", "--fsdp", "1"), ddp=True))
    return work["root"] / "fsdp"


def test_fsdp_trains_like_ddp(ddp, fsdp):
    names = ("train", "norm", "val", "hella")
    a, b = record_map(ddp, names=names), record_map(fsdp, names=names)
    assert set(a) == set(b) and {(s, "train") for s in range(16)} <= set(a)
    clipped = [s for (s, name), v in a.items() if name == "norm" and float(v) > 1.0]
    assert len(clipped) >= 10, f"the norm exceeds --grad_clip 1.0 at steps {clipped} only"
    for key in sorted(a):
        assert abs(float(a[key]) - float(b[key])) < 1e-5, f"{key}: DDP {a[key]}, FSDP {b[key]}"
    assert (fsdp / "samples.txt").read_text() == (ddp / "samples.txt").read_text()
    mine, ref = (torch.load(d / LAST, map_location="cpu", weights_only=True) for d in (fsdp, ddp))
    assert mine["model"].keys() == ref["model"].keys()  # one format: full weights,
    assert mine["optimizer"]["state"].keys() == ref["optimizer"]["state"].keys()  # state by name
    for k in ref["model"]:
        assert torch.allclose(mine["model"][k], ref["model"][k], atol=1e-5), k


def continue_from(work, source, name, step, *extra,
                  launch=lambda env, *args: run_cli(env, *args, ddp=True)):
    """A copy of a finished run's log dir as a kill at `step` leaves it (the later checkpoints
    gone, log.txt still holding records past it), continued by the same command (+ extra)."""
    log_dir = work["root"] / name
    shutil.copytree(source, log_dir)
    for ckpt in checkpoints(log_dir):
        if int(ckpt[6:11]) > step:
            (log_dir / ckpt).unlink()
    proc = ok(launch(work["env"], *run_args(work, name, *extra)))
    assert f"continuing from {log_dir / f'model_{step:05d}.pt'}" in proc.stdout
    return log_dir


def test_fsdp_run_continues_exactly(work, fsdp):
    log_dir = continue_from(work, fsdp, "fsdp_continued", 12, "--fsdp", "1")
    assert (records(log_dir, names=("train", "val", "hella"))
            == records(fsdp, names=("train", "val", "hella")))
    mine, ref = (torch.load(d / LAST, map_location="cpu", weights_only=True)
                 for d in (log_dir, fsdp))
    assert state_dicts_equal(mine["model"], ref["model"])
    for k in ref["optimizer"]["state"]:
        assert state_dicts_equal(mine["optimizer"]["state"][k], ref["optimizer"]["state"][k])


def test_ddp_checkpoint_continues_under_fsdp(work, ddp):
    log_dir = continue_from(work, ddp, "ddp_then_fsdp", 12, "--fsdp", "1")
    a, b = record_map(ddp), record_map(log_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert abs(float(a[key]) - float(b[key])) < 1e-5, \
            f"{key}: DDP {a[key]}, continued under FSDP {b[key]}"


def run_two_nodes(env, *args):
    """torchrun's multi-node launch, two simulated machines on this one: an agent per node, one
    process each, rank 0's agent hosting the rendezvous at a free port of 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                                "--node_rank", str(node), "--master_addr", "127.0.0.1",
                                "--master_port", str(port), "--nproc_per_node", "1",
                                *train_cmd(*args)[1:]], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for node in (0, 1)]
    outs = [agent.communicate(timeout=RUN_TIMEOUT) for agent in agents]
    return subprocess.CompletedProcess(agents[0].args, max(a.returncode for a in agents),
                                       "".join(o for o, _ in outs), "".join(e for _, e in outs))


def test_two_machines_continue_a_run_like_one(work, ddp):
    """Two nodes sharing one --log_dir (a shared disk) continue the DDP run from its step-12
    checkpoint: the same records as the uninterrupted run (itself equal to one process's,
    test_trainer.test_ddp_matches_single_process)."""
    log_dir = continue_from(work, ddp, "two_nodes", 12, launch=run_two_nodes)
    names = ("train", "norm", "val", "hella")
    assert records(log_dir, names=names) == records(ddp, names=names)
    assert json.loads((log_dir / "config.json").read_text())["world_size"] == 2


def test_fsdp_checkpoint_exports_with_the_same_logits(work, fsdp):
    out = work["root"] / "fsdp_hf"
    assert tg.main(["--export", str(fsdp / LAST), "--export_dir", str(out)]) == 0
    assert export_logit_gap(fsdp / LAST, out)[0] < 1e-4


SHARD_COUNTS = """
import json, os, sys, torch, torch.distributed as dist
import train_gpt2 as tg
dist.init_process_group("gloo")
args = tg.get_args(sys.argv[1:]); tg.resolve_defaults(args, dist.get_world_size())
model = tg.GPT(tg.model_config_from_args(args))
tg.shard_model(model, "fp32")
optimizers, _ = tg.configure_optimizers(model, args, "cpu")
_, loss = model(*torch.randint(0, 50257, (2, 2, 16)))
loss.backward()
for optimizer in optimizers:
    optimizer.step()
local = lambda t: t.to_local().numel()
muon = {id(p) for p in optimizers[1].param_groups[0]["params"]}
# a file per rank: the two ranks' printed lines could interleave in torchrun's shared stdout
with open(os.path.join(os.path.dirname(__file__), f"counts_{dist.get_rank()}.json"), "w") as f:
    json.dump({
        "rank": dist.get_rank(), "total": sum(p.numel() for p in model.parameters()),
        "params": sum(local(p) for p in model.parameters()),
        "states": sum(local(v) for o in optimizers for s in o.state.values()
                      for v in s.values() if v.dim()),
        # AdamW keeps two moments a parameter, Muon one, each for this rank's share only
        "expected_states": sum(local(p) * (1 if id(p) in muon else 2)
                               for p in model.parameters())}, f)
dist.destroy_process_group()
tg.exit_process(0)  # as the trainer ends: gloo's threads can abort Python's own shutdown
"""


def test_each_rank_holds_half_of_the_parameters_and_optimizer_states(work):
    script = work["root"] / "shard_counts.py"
    script.write_text(SHARD_COUNTS)
    ok(subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                       "--nproc_per_node=2", str(script), "--n_layer", "2", "--n_head", "2",
                       "--n_embd", "64", "--block_size", "64", "--optimizer", "muon",
                       "--arch", "modern"], cwd=REPO,
                      env=work["env"] | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                      timeout=300))
    counts = [json.loads((work["root"] / f"counts_{rank}.json").read_text()) for rank in (0, 1)]
    assert [c["rank"] for c in counts] == [0, 1]
    for c in counts:  # FSDP pads a tensor whose first dim is odd by less than a row
        assert abs(c["params"] / c["total"] - 0.5) < 0.01, c
        assert c["states"] == c["expected_states"], c


def saved_bytes(model, x, y):
    """Bytes autograd keeps for the backward of one training forward."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
        _, loss = model(x, y)
    return loss, sum(saved)


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_activation_checkpointing_same_math_less_memory(arch):
    torch.manual_seed(0)
    # a small vocab, so that the logits (which checkpointing does not touch) do not hide the blocks
    model = tg.GPT(tg.GPTConfig(arch=arch, block_size=64, vocab_size=256, n_layer=4, n_head=2,
                                n_embd=64))
    x, y = torch.randint(0, 256, (2, 4, 64))
    results = []
    for on in (False, True):
        model.activation_checkpointing = on
        model.zero_grad()
        loss, saved = saved_bytes(model, x, y)
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()], saved))
    (loss0, grads0, saved0), (loss1, grads1, saved1) = results
    assert loss1 == loss0
    assert all(torch.equal(a, b) for a, b in zip(grads0, grads1))
    # what is left: one input per block, and the final norm, the logits and the loss
    assert saved1 < 0.3 * saved0, (saved0, saved1)
