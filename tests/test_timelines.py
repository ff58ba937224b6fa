"""
Which checkpoint a run continues from, when the history is not a straight line: in-process runs of
the tiny model (train_gpt2.main), one process, CPU.

  * a run continued from an older checkpoint sets the later ones aside (renamed, never deleted,
    their logs kept, no earlier set-aside file overwritten): the plain command afterwards
    continues the new timeline, not the old end;
  * `--resume PATH` run again continues from the newest checkpoint that PATH led to;
  * another --data_dir is refused unless --resume asks for it, and then recorded; the same folder
    spelt another way is no change;
  * a --resume that changes the schedule says how the LR jumps at that step;
  * on several machines, ranks that see other files (or fail alone) stop together with one line
    that names the rank and its host.
"""

import json
import os
import shutil

import pytest
import torch

import train_gpt2 as tg
from helpers import TINY, assert_one_error_line, records, work_dir
from results import write_training_params as wtp

RUN = [*TINY, "--max_steps", "8", "--val_every", "0", "--checkpoint_every", "2"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    yield from work_dir(tmp_path_factory, "timelines")


def run_main(capsys, monkeypatch, *argv, crash_after=None):
    """main(argv) in this process -> (exit code, stdout, stderr); crash_after=s: the process dies
    (KeyboardInterrupt) right after the training step s, as a kill would leave it."""
    def log_step(run, step, *rest):
        real_log_step(run, step, *rest)
        if step == crash_after:
            raise KeyboardInterrupt

    real_log_step = tg.log_step
    monkeypatch.setattr(tg, "log_step", log_step)
    capsys.readouterr()
    code = tg.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    monkeypatch.setattr(tg, "log_step", real_log_step)
    return code, out, err


def test_timelines_resume_and_changed_settings(work, capsys, monkeypatch):
    log_dir = work["root"] / "run"
    cmd = [*RUN, "--data_dir", work["data"], "--log_dir", log_dir]
    assert run_main(capsys, monkeypatch, *cmd)[0] == 0  # the first timeline: steps 0-8
    first_end = torch.load(log_dir / "model_00008.pt", map_location="cpu", weights_only=True)

    # back to step 2; the process dies after step 4's checkpoint
    again = [*cmd, "--resume", log_dir / "model_00002.pt"]
    code, out, _ = run_main(capsys, monkeypatch, *again, crash_after=4)
    assert code == 130
    assert "3 checkpoint(s) past step 2 belong to another timeline" in out
    aside = sorted(set(os.listdir(log_dir)) - {"model_00002.pt", "model_00004.pt", "log.txt",
                                                "config.json"})
    stamp = aside[0].split(".")[1]
    assert aside == [f"log.{stamp}.txt"] + [f"model_0000{s}.{stamp}.pt" for s in (4, 6, 8)]
    assert [s for s, _ in tg.read_log(log_dir / aside[0]).streams()["train"]] == list(range(8))
    assert tg.list_checkpoints(log_dir) == [str(log_dir / f"model_0000{s}.pt") for s in (2, 4)]

    # the same command again continues from what it saved (step 4), not from step 2 again
    code, out, _ = run_main(capsys, monkeypatch, *again, crash_after=6)
    assert code == 130
    assert f"note: {log_dir / 'model_00004.pt'} continues the run that --resume" in out
    assert f"continuing from {log_dir / 'model_00004.pt'} at step 4" in out
    assert "another timeline" not in out

    # the plain command continues this timeline (step 6) to its end, not the old end
    code, out, _ = run_main(capsys, monkeypatch, *cmd)
    assert code == 0 and f"continuing from {log_dir / 'model_00006.pt'} at step 6" in out
    assert [s for s, _, _ in records(log_dir, names=("train",))] == list(range(8))
    new_end = torch.load(log_dir / "model_00008.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(new_end["model"][k], first_end["model"][k]) for k in first_end["model"])
    resumed = json.loads((log_dir / "config.json").read_text())["resumed_from"]
    assert [os.path.basename(p) for p in resumed] == [f"model_0000{s}.pt" for s in (2, 4, 6)]

    # another data dir: refused, and nothing changes; the same folder spelt relatively: no change
    other = shutil.copytree(work["data"], work["root"] / "other_data")
    before = sorted(os.listdir(log_dir)), (log_dir / "log.txt").read_text()
    code, _, err = run_main(capsys, monkeypatch, *cmd, "--data_dir", other)
    assert_one_error_line(err, code, f"data_dir {work['data']} -> {other}", "--resume")
    code, out, _ = run_main(capsys, monkeypatch, *cmd, "--data_dir", os.path.relpath(work["data"]))
    assert code == 0 and "nothing to do" in out
    assert (sorted(os.listdir(log_dir)), (log_dir / "log.txt").read_text()) == before

    # on purpose: recorded, and the LR's jump where the longer schedule takes over is on screen
    code, out, _ = run_main(capsys, monkeypatch, *cmd, "--resume", "--data_dir", other,
                            "--max_steps", "10")
    assert code == 0, out
    jump = f"{6e-4 * tg.lr_factor(8, 2, 8, 0.1):.4e} -> {6e-4 * tg.lr_factor(8, 2, 10, 0.1):.4e}"
    assert f"note: the LR at step 8 jumps {jump}" in out
    config = json.loads((log_dir / "config.json").read_text())
    change = {"step": 8, "setting": "data_dir", "old": str(work["data"]), "new": str(other)}
    assert change in config["setting_changes"]
    rows = dict(wtp.summary_rows(wtp.load_run(log_dir)))
    assert f"step 8: data_dir {work['data']} -> {other}" in rows["setting changes"]


def test_setting_aside_never_overwrites_files_set_aside_before(tmp_path):
    """Two timelines left at the same second would share a name: refused, every file as it was."""
    later, log = tmp_path / "model_00004.pt", tmp_path / "log.txt"
    later.write_text("timeline 2"), log.write_text("0 train 2.0\n")
    os.utime(later, (1e9, 1e9))
    stamp = tg.set_aside([str(later)], copied=[str(log)])
    assert (tmp_path / f"model_00004.{stamp}.pt").read_text() == "timeline 2" and not later.exists()
    assert (tmp_path / f"log.{stamp}.txt").read_text() == log.read_text() == "0 train 2.0\n"
    later.write_text("timeline 3"), log.write_text("0 train 3.0\n")
    os.utime(later, (1e9, 1e9))
    before = {p.name: p.read_text() for p in tmp_path.iterdir()}
    with pytest.raises(tg.UserError, match=f"model_00004.{stamp}.pt exists"):
        tg.set_aside([str(later)], copied=[str(log)])
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == before


def on_two_ranks(monkeypatch, other_rank):
    """A 2-rank job faked in this process: rank 1's gathered [error, what it found, host] is
    other_rank(rank 0's)."""
    def all_gather_object(out, mine):
        out[:] = [mine, other_rank(mine)]

    monkeypatch.setattr(tg.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(tg.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(tg.dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(tg.dist, "all_reduce", lambda t, op=None: None)  # any_rank: rank 0's flag
    monkeypatch.setattr(tg.dist, "destroy_process_group", lambda: None)


def test_ranks_agree_or_stop_together_naming_rank_and_host(monkeypatch):
    fix, host = "every node must see one --log_dir", tg.socket.gethostname()

    def fail(message="data dir d does not exist"):
        raise tg.UserError(message)

    on_two_ranks(monkeypatch, lambda mine: mine)
    assert tg.same_on_every_rank(lambda: 7, str, fix) == 7
    with pytest.raises(tg.UserError, match=r"^data dir d does not exist$"):  # as one process
        tg.same_on_every_rank(fail, str, fix)
    on_two_ranks(monkeypatch, lambda mine: [None, "no checkpoint", "box-b"])
    with pytest.raises(tg.UserError) as e:
        tg.same_on_every_rank(lambda: "log/model_00010.pt (step 10)", str, fix)
    assert str(e.value) == (f"the ranks see different files: rank 0 on {host}: log/model_00010.pt "
                            f"(step 10); rank 1 on box-b: no checkpoint; {fix}")
    on_two_ranks(monkeypatch, lambda mine: ["data dir d does not exist", None, "box-b"])
    alone = rf"^data dir d does not exist \(rank 1 on box-b; {fix}\)$"
    with pytest.raises(tg.UserError, match=alone):
        tg.same_on_every_rank(lambda: "3 shards", str, fix)


@pytest.mark.parametrize("differs", ["checkpoint", "shards"])
def test_a_node_that_sees_other_files_is_one_line_naming_it(work, capsys, monkeypatch, differs):
    """Each machine with its own disk: rank 1 (faked) finds a checkpoint where rank 0 finds none,
    or a train shard fewer."""
    def other_rank(mine):
        if differs == "checkpoint" and mine[1] == "no checkpoint":
            return [None, "log/model_00004.pt (step 4)", "box-b"]
        if differs == "shards" and "shard(s)" in (mine[1] or ""):
            return [None, mine[1].replace("3 train", "2 train"), "box-b"]
        return mine

    on_two_ranks(monkeypatch, other_rank)
    log_dir = work["root"] / f"two_nodes_{differs}"
    code, _, err = run_main(capsys, monkeypatch, *RUN, "--data_dir", work["data"], "--log_dir",
                            log_dir)
    needles = {
        "checkpoint": ["no checkpoint; rank 1 on box-b: log/model_00004.pt (step 4)",
                       "every node must see one --log_dir, at the same path (a shared disk)"],
        "shards": ["rank 0 on ", "3 train shard(s) of 1,238 tokens;",
                   "rank 1 on box-b: 2 train shard(s)",
                   f"every node needs the same shards in --data_dir {work['data']}"]}[differs]
    assert_one_error_line(err, code, "the ranks see different files: rank 0 on ", *needles)
    assert not log_dir.exists()
