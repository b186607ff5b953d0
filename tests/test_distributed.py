"""Several processes with torch.distributed (gloo on the CPU), launched by torchrun.

One torchrun launch of 2 processes (``dist_worker.py``) runs a recorded search, a search killed and resumed, and
the split work (scoring, from-scratch seeds); the test compares the ranks with each other and with one process
running the same code here.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import evaluate as ev
import rundir
from space import REDUCED

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import dist_worker  # noqa: E402


def strip_times(result):
    drop = {"seconds", "wall_seconds", "run_dir", "config", "supernet"}
    if isinstance(result, dict):
        return {k: strip_times(v) for k, v in result.items() if k not in drop}
    return [strip_times(v) for v in result] if isinstance(result, list) else result


def test_one_process_is_a_world_of_one():
    """Without torchrun nothing changes: rank 0 of 1, no sharding, no averaging, no BN reduction."""
    assert not distributed.active() and distributed.rank() == 0 and distributed.world() == 1
    x = torch.arange(6.0)
    assert distributed.shard(x) is x and distributed.batch_stats_reduce() is None
    g = torch.ones(3)
    distributed.average_([g])
    assert g.tolist() == [1.0, 1.0, 1.0]
    assert distributed.map_shared(lambda i: i * i, [1, 2, 3]) == [1, 4, 9]
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.mean(2.5, torch.device("cpu")) == 2.5


def test_rank_zero_alone_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    rundir.write_json(tmp_path / "x.json", {"a": 1})
    assert not (tmp_path / "x.json").exists()
    with rundir.run_folder(tmp_path / "run") as run_dir:
        assert run_dir == tmp_path / "run"
    assert not (tmp_path / "run").exists()       # no folder, no lock: rank 0 holds it


@pytest.mark.slow
def test_two_processes_under_torchrun(tmp_path):
    """One launch, several properties: the ranks stay bit-identical and follow one process with the same global
    batch; a run interrupted on both ranks resumes to the uninterrupted result, without sending its checkpoint between
    them; split work equals one process's."""
    common = dict(dataset="synthetic", synthetic_size=400, **REDUCED, device="cpu", progress=False)
    ev.train_supernet(ev.SupernetConfig(**common, out=str(tmp_path), name="net", epochs=1, batch_size=64, lr=0.1))
    supernet = str(tmp_path / "net" / "supernet.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "dist_worker.py"), str(tmp_path), supernet], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                 # as the ranks: the same sums in the same order
    try:
        single = dist_worker.steps(tmp_path / "one")
        one = dist_worker.score_and_scratch(tmp_path, supernet, 1)
    finally:
        torch.set_num_threads(threads)

    # 1. Θ, the architecture, the weights and the BN buffers agree bit for bit on both ranks, every step
    a, b = (r["steps"]["records"] for r in ranks)
    assert len(a) == len(b) > 10 and a == b
    # ... and follow one process with the same global batch of 32: the same spaces, architectures and masked-
    # forward sizes at every step, Θ up to floating-point order (global-batch BN sums over 2 shards, not 1 batch)
    assert [r.get("arch") for r in single["records"]] == [r.get("arch") for r in a]
    assert [r.get("executed") for r in single["records"]] == [r.get("executed") for r in a]
    for s, t in zip(single["records"], a):
        for p, q in zip(s["theta_values"], t["theta_values"]):
            assert torch.allclose(torch.tensor(p), torch.tensor(q), atol=1e-4), (s["step"], p, q)
    assert ranks[0]["steps"]["result"]["elite_space"] == single["result"]["elite_space"]
    assert json.loads((tmp_path / "two" / "steps" / "config.json").read_text())["world_size"] == 2
    assert json.loads((tmp_path / "one" / "steps" / "config.json").read_text())["world_size"] == 1

    # 2. Ctrl-C after epoch 2 on both ranks keeps that epoch; both resume to the uninterrupted result
    assert "--resume" in ranks[0]["interrupted"] and ranks[1]["interrupted"] and ranks[0]["epoch_kept"] == 2
    for r in ranks:
        assert strip_times(r["resumed"]) == strip_times(r["whole"])
    # ... and the resume sends no checkpoint between the processes (rank 0 checks it, every rank reads it itself):
    # only small objects go through the object collectives, which allocate world-size times what they send
    assert ranks[0]["checkpoint_bytes"] > 100_000
    for r in ranks:
        assert max(r["resume_objects_sent"], default=0) < 1000, r["resume_objects_sent"]

    # 3. scoring and from-scratch seeds split over 2 ranks give the one-process result, on every rank
    for r in ranks:
        assert r["score"] == {**one["score"], "supernet": r["score"]["supernet"]}
        assert len(r["score"]["spaces"]["full"]["scores"]) == 7
        assert strip_times(r["scratch"]["runs"]) == strip_times(one["scratch"]["runs"])
    assert sorted(p.name for p in (tmp_path / "scratch-2").glob("seed*.pt")) == ["seed0.pt", "seed1.pt", "seed2.pt"]
    for seed in range(3):           # the networks trained on rank 1 reach rank 0's files intact
        x, y = (torch.load(tmp_path / f"scratch-{w}" / f"seed{seed}.pt", weights_only=True)["state"] for w in (1, 2))
        assert all(torch.equal(x[k], y[k]) for k in x)
