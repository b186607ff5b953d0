"""One process of a test launched as torchrun would launch it (RANK, WORLD_SIZE, MASTER_ADDR, …).

    python tests/dist_worker.py <job> <out folder> [args…]

Jobs: ``steps`` records, after every weight and Θ step of a tiny NSS search, digests of Θ, the
weights, the BN buffers and the sampled architecture (to <out>/steps-rank<R>.json); ``cli`` runs a
command line (nss.py, evaluate.py) in this process, as torchrun would; ``interrupt-after <epoch>``
runs nss.py's command line with a Ctrl-C after that epoch.
"""
import hashlib
import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import distributed  # noqa: E402


def digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def steps(out: Path, batch_size: str):
    import search
    import nss
    from space import REDUCED
    distributed.init()
    records = []
    weight_step, theta_step = search.Searcher.weight_step, search.Searcher.theta_step

    def record(s, kind, extra):
        buffers = [b for n, b in s.supernet.named_buffers() if "running" in n]
        records.append({"kind": kind, "step": s.step, "theta": digest(s.theta.parameters()),
                        "theta_values": [p.tolist() for p in s.theta.parameters()],
                        "weights": digest(s.supernet.parameters()), "bn": digest(buffers), **extra})

    def logged_weight_step(s, x, y, lr, uniform):
        state = s.gen.get_state()
        loss = weight_step(s, x, y, lr, uniform)
        s.gen.set_state(state)               # draw the same architecture again, to record it
        arch = s.theta.sample(s.gen, uniform=uniform).sample(s.gen)
        record(s, "weight", {"arch": [list(arch.depths), list(arch.widths)]})
        return loss

    def logged_theta_step(s, *args):
        out_ = theta_step(s, *args)
        record(s, "theta", {"executed": s.executed_flops[-1]})
        return out_
    search.Searcher.weight_step, search.Searcher.theta_step = logged_weight_step, logged_theta_step
    cfg = nss.NSSConfig(dataset="synthetic", synthetic_size=256, **REDUCED, target=6e6, epochs=3, warmup_epochs=1,
                        batch_size=int(batch_size), progress=False, out=str(out), name="steps", device="cpu")
    result = nss.run(cfg)
    (out / f"steps-rank{distributed.rank()}.json").write_text(json.dumps({"records": records, "result": result}))
    distributed.close()


def interrupt_after(epoch: str, script: str, *args):
    """nss.py's command line, with Ctrl-C arriving after epoch ``epoch`` (as torchrun passes it to every rank)."""
    import nss
    import runs

    def main(argv):
        def interrupt(searcher, record):
            if record["epoch"] == int(epoch):
                raise KeyboardInterrupt
        nss.run(runs.parse_config(nss.NSSConfig, argv), callback=interrupt)
        return 0
    sys.argv = [str(ROOT / script), *args]
    runs.cli(main)


def cli(script: str, *args):
    sys.argv = [str(ROOT / script), *args]
    runpy.run_path(str(ROOT / script), run_name="__main__")


if __name__ == "__main__":
    torch.set_num_threads(1)
    job, rest = sys.argv[1], sys.argv[2:]
    if job == "steps":
        steps(Path(rest[0]), rest[1])
    elif job == "cli":
        cli(*rest)
    elif job == "interrupt-after":
        interrupt_after(*rest)
