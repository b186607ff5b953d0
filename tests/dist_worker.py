"""One process of the several-process test, started by torchrun (or, for the one-process reference, imported).

    torchrun --nproc_per_node 2 tests/dist_worker.py <out folder> <supernet.pt>

In one launch it runs, in order: a tiny NSS search that records digests of Θ, the weights, the BN buffers and
the sampled architecture after every weight and Θ step (``steps``); a search interrupted by Ctrl-C after its
second epoch and resumed, beside the same search uninterrupted, recording what the resume sends through object
collectives (``kill_and_resume``); scoring and from-scratch training, which the processes split
(``score_and_scratch``). What each rank saw goes to <out>/rank<R>.json.
"""
import hashlib
import json
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import distributed  # noqa: E402
import evaluate as ev  # noqa: E402
import nss  # noqa: E402
import runs  # noqa: E402
import search  # noqa: E402
from space import REDUCED, Arch  # noqa: E402

TINY = ["--dataset", "synthetic", "--d-max", "4", "--w-max", "16", "--d-step", "2", "--w-step", "4",
        "--no-progress", "--device", "cpu", "--threads", "1"]


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def steps(out: Path) -> dict:
    """A tiny NSS search at global batch 32, recording every step."""
    records = []
    weight_step, theta_step = search.Searcher.weight_step, search.Searcher.theta_step

    def record(s, kind, extra):
        buffers = [b for n, b in s.supernet.named_buffers() if "running" in n]
        records.append({"kind": kind, "step": s.step, "theta": digest(s.theta.parameters()),
                        "theta_values": [p.tolist() for p in s.theta.parameters()],
                        "weights": digest(s.supernet.parameters()), "bn": digest(buffers), **extra})

    def logged_weight_step(s, x, y, lr, uniform=False):
        state = s.gen.get_state()
        loss = weight_step(s, x, y, lr, uniform)
        s.gen.set_state(state)               # draw the same architecture again, to record it
        arch = s.theta.sample(s.gen, uniform=uniform).sample(s.gen)
        record(s, "weight", {"arch": [list(arch.depths), list(arch.widths)]})
        return loss

    def logged_theta_step(s, *args):
        out_ = theta_step(s, *args)
        record(s, "theta", {"executed": out_[2]})
        return out_
    search.Searcher.weight_step, search.Searcher.theta_step = logged_weight_step, logged_theta_step
    try:
        cfg = nss.NSSConfig(dataset="synthetic", synthetic_size=256, **REDUCED, target=6e6, epochs=3, warmup_epochs=1,
                            batch_size=32, progress=False, out=str(out), name="steps", device="cpu", threads=1)
        result = nss.run(cfg)
    finally:
        search.Searcher.weight_step, search.Searcher.theta_step = weight_step, theta_step
    return {"records": records, "result": result}


def kill_and_resume(out: Path) -> dict:
    """The same search whole, and interrupted after epoch 2 (as torchrun passes Ctrl-C to every rank), then resumed."""
    argv = ["--quick", *TINY, "--epochs", "3", "--warmup-epochs", "1", "--batch-size", "32", "--synthetic-size", "128",
            "--out", str(out)]
    whole = nss.run(runs.parse_config(nss.NSSConfig, [*argv, "--name", "whole"]))

    def interrupt(searcher, record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt
    try:
        nss.run(runs.parse_config(nss.NSSConfig, [*argv, "--name", "cut"]), callback=interrupt)
        interrupted = ""
    except KeyboardInterrupt as e:
        interrupted = str(e) or type(e).__name__
    epoch = torch.load(out / "cut" / "checkpoint.pt", weights_only=True)["epoch"] if distributed.is_main() else None
    checkpoint_bytes = (out / "cut" / "checkpoint.pt").stat().st_size
    with objects_sent() as sent:
        resumed = nss.run(runs.parse_config(nss.NSSConfig, [*argv, "--name", "cut", "--resume"]))
    return {"whole": whole, "interrupted": interrupted, "epoch_kept": epoch, "resumed": resumed,
            "checkpoint_bytes": checkpoint_bytes, "resume_objects_sent": sent}


@contextmanager
def objects_sent():
    """The pickled size of every object this process hands to an object collective (all_gather_object,
    broadcast_object_list: what torch pickles, and allocates world-size times over) while inside."""
    sizes = []
    gather, broadcast = dist.all_gather_object, dist.broadcast_object_list

    def all_gather_object(object_list, obj, *args, **kwargs):
        sizes.append(len(pickle.dumps(obj)))
        return gather(object_list, obj, *args, **kwargs)

    def broadcast_object_list(object_list, *args, **kwargs):
        sizes.append(len(pickle.dumps(object_list)))
        return broadcast(object_list, *args, **kwargs)
    dist.all_gather_object, dist.broadcast_object_list = all_gather_object, broadcast_object_list
    try:
        yield sizes
    finally:
        dist.all_gather_object, dist.broadcast_object_list = gather, broadcast


def score_and_scratch(out: Path, supernet: str, world: int) -> dict:
    """Scoring and from-scratch seeds, split over the processes."""
    same = [*TINY, "--synthetic-size", "400", "--out", str(out)]
    space = TINY.index("--d-max")                  # scoring takes its space from the supernet file
    unspaced = [*TINY[:space], *TINY[space + 8:], "--synthetic-size", "400", "--out", str(out)]
    score = ev.run_score(runs.parse_config(ev.ScoreConfig, [*unspaced, "--supernet", supernet, "--n", "7", "--calib-images",
                                                            "100", "--test-images", "100", "--name", f"score-{world}"]))
    arch = json.dumps(Arch((1, 2, 1), (4, 8, 8)).to_dict())
    scratch = ev.run_scratch(runs.parse_config(ev.ScratchConfig, [*same, "--arch", arch, "--recipe", "fast", "--seeds", "3",
                                                                  "--epochs", "1", "--batch-size", "64",
                                                                  "--name", f"scratch-{world}"]))
    return {"score": score, "scratch": scratch}


def main(out: Path, supernet: str):
    torch.set_num_threads(1)
    assert distributed.init()
    seen = {"world": distributed.world(), "steps": steps(out / "two"), **kill_and_resume(out / "two"),
            **score_and_scratch(out, supernet, distributed.world())}
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(seen, default=str))
    distributed.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
