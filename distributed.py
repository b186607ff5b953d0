"""Several processes, one run: ``torchrun`` and ``torch.distributed`` (the paper searched on 4 GPUs, §4.1).

    torchrun --nproc_per_node 4 nss.py --dataset cifar10 --target 1.6e9

One process per device (NCCL between GPUs, gloo on the CPU). Every process holds the whole data, the
whole supernet and Θ, and the same seeds, so all of them draw the same batch, space, architecture,
Gumbel noise and depth/width values at every step; each takes its share of the global batch
(``shard``), and the gradients of the weights and of Θ are averaged (``average_grads``), so that the
replicas stay identical. BN statistics are those of the global batch (``supernet._global_batch_norm``
through ``batch_stats_reduce``). Work that needs no gradient exchange (scoring architectures, training
seeds from scratch) is split instead (``map_shared``). Only rank 0 writes files; every process can
resume, from the checkpoint rank 0 reads and broadcasts. A process started without torchrun is rank 0 of a world of 1, and nothing here changes it.
"""
from __future__ import annotations

import datetime
import os
from contextlib import contextmanager
from typing import Callable, Sequence

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that writes the run folder, the checkpoints and the results."""
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """Started by torchrun (or with its environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init(timeout_minutes: float = 30.0) -> bool:
    """Join the process group that torchrun describes; False (and nothing done) without torchrun.

    One backend per tensor kind: NCCL for CUDA tensors where CUDA exists, gloo for CPU tensors
    (Θ lives on the host). A process sees one GPU per local rank (``device``).
    """
    if active() or not launched():
        return active()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def close():
    if active():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This process's device: under torchrun, ``cuda`` means cuda:<local rank>."""
    if device.type == "cuda" and device.index is None and active():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


# --------------------------------------------------------------------------------------------
# Gradients: one replica per process, kept identical
# --------------------------------------------------------------------------------------------

def shard(t: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (contiguous, as equal as the batch allows)."""
    return t if world() == 1 else t.tensor_split(world())[rank()]


def average_(tensors: Sequence[torch.Tensor]):
    """Average tensors over the processes in place, in one all-reduce per device (a no-op in one process)."""
    tensors = list(tensors)
    if world() == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world()
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def average_grads(params) -> None:
    """Average the gradients of ``params`` over the processes. Every process ran the same sub-network,
    so the same parameters hold a gradient everywhere, in the same order."""
    average_([p.grad for p in params if p.grad is not None])


def mean(value: float | torch.Tensor, device: torch.device) -> float:
    """The mean of a scalar over the processes (a per-epoch loss, say)."""
    if world() == 1:
        return float(value)
    t = torch.as_tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t) / world()


class _Sum(torch.autograd.Function):
    """y = Σ_ranks x, differentiable: the gradient of x on each rank is Σ_ranks ∂L_r/∂y."""

    @staticmethod
    def forward(ctx, x):
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def batch_stats_reduce() -> Callable | None:
    """A sum over the processes with autograd, for global-batch BN (None in one process)."""
    return None if world() == 1 else _Sum.apply


# --------------------------------------------------------------------------------------------
# Agreement, sharing and failures
# --------------------------------------------------------------------------------------------

class RankFailed(Exception):
    """Another process stopped (a bad flag, a missing file): every process exits with its message."""


_in_steps = False       # inside collective training steps: a failure there ends the run through torchrun


def exchange(payload=None, error: str | None = None) -> list:
    """All-gather one payload per process, or an error; if any process sent an error, every other one
    raises RankFailed naming it (the failing process itself returns). One process: ``[payload]``."""
    if world() == 1:
        return [payload]
    box: list = [None] * world()
    dist.all_gather_object(box, (error, payload))
    failed = [(r, e) for r, (e, _) in enumerate(box) if e]
    if failed and error is None:
        raise RankFailed(f"rank {failed[0][0]} stopped: {failed[0][1]}")
    return [p for _, p in box]


def agree():
    """Every process is ready to start collective steps, or all stop (a failing one calls ``fail``)."""
    exchange()


def fail(message: str):
    """Tell the other processes why this one stops, so that none waits for it. Inside collective training
    steps the others cannot listen: there torchrun stops them when this process exits."""
    if world() > 1 and not _in_steps:
        exchange(error=message)


@contextmanager
def steps():
    """Collective training steps (all-reduces every step): a failure here skips ``fail``'s exchange."""
    global _in_steps
    _in_steps = True
    try:
        yield
        _in_steps = False
    except BaseException:
        raise          # stays True: the processes are out of step, only torchrun can stop them


def broadcast(obj):
    """``obj`` of rank 0 on every process (a checkpoint read by rank 0, say). An ``exchange``, so that a
    process failing meanwhile is heard instead of waited for."""
    return exchange(obj if is_main() else None)[0]


def my_share(n: int) -> range:
    """The indices of ``n`` work items that this process takes: every world()-th one."""
    return range(rank(), n, world())


def map_shared(fn: Callable, items: Sequence) -> list:
    """``[fn(item) for item in items]`` with the items split over the processes (``my_share``): each
    process computes its share, and every process gets the whole list back, in order."""
    mine = {i: fn(items[i]) for i in my_share(len(items))}
    done: dict = {}
    for part in exchange(mine):
        done.update(part)
    return [done[i] for i in range(len(items))]
