"""Several processes with torch.distributed (gloo on the CPU), launched as torchrun launches them.

Each test starts 2 processes with torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
LOCAL_RANK) and compares them with each other and with one process.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import distributed
import evaluate as ev
import nss
import runs
from space import REDUCED, Arch

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "dist_worker.py")
TIMEOUT = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args_of_rank, world: int = 2, timeout: int = TIMEOUT) -> list[subprocess.CompletedProcess]:
    """Run ``world`` processes of dist_worker.py (rank r gets ``args_of_rank(r)``) and wait for all of them."""
    port = free_port()
    procs = []
    for r in range(world):
        env = {**os.environ, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, WORKER, *args_of_rank(r)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=ROOT))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    finally:
        for p in procs:
            p.kill()
    return done


def strip_times(result):
    drop = {"seconds", "wall_seconds", "run_dir"}
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
    assert distributed.broadcast({"a": 1}) == {"a": 1} and list(distributed.my_share(3)) == [0, 1, 2]


@pytest.mark.slow
def test_two_ranks_stay_identical_and_follow_one_process_with_the_same_global_batch(tmp_path):
    procs = launch(lambda r: ["steps", str(tmp_path / "two"), "32"])
    assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    ranks = [json.loads((tmp_path / "two" / f"steps-rank{r}.json").read_text()) for r in range(2)]
    a, b = (r["records"] for r in ranks)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b):          # Θ, the architecture, the weights and the BN buffers: bit for bit, every step
        assert x == y
    one = launch(lambda r: ["steps", str(tmp_path / "one"), "32"], world=1)
    assert one[0].returncode == 0, one[0].stderr[-2000:]
    single = json.loads((tmp_path / "one" / "steps-rank0.json").read_text())
    # the same global batch of 32: the same spaces, architectures and masked-forward sizes at every step ...
    assert [r.get("arch") for r in single["records"]] == [r.get("arch") for r in a]
    assert [r.get("executed") for r in single["records"]] == [r.get("executed") for r in a]
    # ... and Θ up to floating-point order (global-batch BN; sums over 2 shards instead of 1 batch)
    for s, t in zip(single["records"], a):
        for p, q in zip(s["theta_values"], t["theta_values"]):
            assert torch.allclose(torch.tensor(p), torch.tensor(q), atol=1e-4), (s["step"], p, q)
    two = ranks[0]["result"]
    assert two["elite_space"] == single["result"]["elite_space"]
    config = json.loads((tmp_path / "two" / "steps" / "config.json").read_text())
    assert config["world_size"] == 2
    assert json.loads((tmp_path / "one" / "steps" / "config.json").read_text())["world_size"] == 1


@pytest.mark.slow
def test_kill_and_resume_under_two_processes_ends_as_an_uninterrupted_run(tmp_path):
    base = ["nss.py", "--quick", "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "32",
            "--synthetic-size", "128", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    whole = launch(lambda r: ["cli", *base, "--name", "whole"])
    assert all(p.returncode == 0 for p in whole), [p.stderr[-2000:] for p in whole]
    assert "Elite Space" in whole[0].stdout and whole[1].stdout == ""       # one summary, from rank 0
    # Ctrl-C after epoch 2 on both ranks (torchrun passes it to every process), then resumed by 2 processes
    cut = launch(lambda r: ["interrupt-after", "2", *base, "--name", "cut"])
    assert all(p.returncode == 130 for p in cut), [p.stderr[-2000:] for p in cut]
    assert not (tmp_path / "cut" / "result.json").exists()
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    resumed = launch(lambda r: ["cli", *base, "--name", "cut", "--resume"])
    assert all(p.returncode == 0 for p in resumed), [p.stderr[-2000:] for p in resumed]
    a, b = (json.loads((tmp_path / n / "result.json").read_text()) for n in ("whole", "cut"))
    assert strip_times(a) == strip_times(b)


@pytest.mark.slow
def test_a_bad_flag_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    base = ["nss.py", "--quick", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    procs = launch(lambda r: ["cli", *base, *(["--synthetic-size", "5"] if r == 1 else [])], timeout=120)
    assert [p.returncode for p in procs] == [2, 2]
    for p in procs:
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "too few images" in lines[0], p.stderr[-2000:]
    assert "rank 1 stopped" in procs[0].stderr


@pytest.mark.slow
def test_scoring_and_scratch_split_over_two_ranks_give_the_one_process_result(tmp_path):
    common = dict(dataset="synthetic", synthetic_size=400, **REDUCED, device="cpu", progress=False)
    ev.train_supernet(ev.SupernetConfig(**common, out=str(tmp_path), name="net", epochs=1, batch_size=64, lr=0.1))
    supernet = str(tmp_path / "net" / "supernet.pt")
    same = ["--dataset", "synthetic", "--synthetic-size", "400", "--d-max", "4", "--w-max", "16", "--d-step", "2",
            "--w-step", "4", "--no-progress", "--device", "cpu", "--out", str(tmp_path)]
    score = ["evaluate.py", "score", *same, "--supernet", supernet, "--n", "7", "--calib-images", "100",
             "--test-images", "100"]
    arch = json.dumps(Arch((1, 2, 1), (4, 8, 8)).to_dict())
    scratch = ["evaluate.py", "scratch", *same, "--arch", arch, "--recipe", "fast", "--seeds", "3", "--epochs", "1",
               "--batch-size", "64"]
    for cmd in (score, scratch):
        procs = launch(lambda r: ["cli", *cmd, "--name", f"{cmd[1]}-2"])
        assert all(p.returncode == 0 for p in procs), [p.stderr[-2000:] for p in procs]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)            # as the ranks: the same sums in the same order, bit for bit
    try:                                # one process
        ev.run_score(runs.parse_config(ev.ScoreConfig, [*score[2:], "--name", "score-1"]))
        ev.run_scratch(runs.parse_config(ev.ScratchConfig, [*scratch[2:], "--name", "scratch-1"]))
    finally:
        torch.set_num_threads(threads)
    one, two = (json.loads((tmp_path / f"score-{w}" / "scores.json").read_text()) for w in (1, 2))
    assert one == two and len(one["spaces"]["full"]["scores"]) == 7
    one, two = (json.loads((tmp_path / f"scratch-{w}" / "scratch.json").read_text()) for w in (1, 2))
    assert strip_times(one["runs"]) == strip_times(two["runs"]) and one["errors"] == two["errors"]
    assert sorted(p.name for p in (tmp_path / "scratch-2").glob("seed*.pt")) == ["seed0.pt", "seed1.pt", "seed2.pt"]
    for seed in range(3):           # the networks trained on rank 1 reach rank 0's files intact
        a, b = (torch.load(tmp_path / f"scratch-{w}" / f"seed{seed}.pt", weights_only=True)["state"] for w in (1, 2))
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_rank_zero_alone_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    runs.write_json(tmp_path / "x.json", {"a": 1})
    assert not (tmp_path / "x.json").exists()
    with runs.run_folder(tmp_path / "run", nss.NSSConfig(out=str(tmp_path))) as run_dir:
        assert run_dir == tmp_path / "run"
    assert not (tmp_path / "run").exists()       # no folder, no lock: rank 0 holds it
