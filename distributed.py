"""Several processes, one run: ``torchrun`` and ``torch.distributed`` (the paper searched on 4 GPUs, §4.1).

    torchrun --nproc_per_node 4 nss.py --dataset cifar10 --target 1.6e9

One process per device (NCCL between GPUs, gloo on the CPU). Every process holds the whole data, the
whole supernet and Θ, and the same seeds, so all of them draw the same batch, space, architecture,
Gumbel noise and depth/width values at every step; each takes its share of the global batch
(``shard``), and the gradients of the weights and of Θ are averaged (``average_grads``), so the
replicas stay identical. BN statistics are those of the global batch (``batch_stats_reduce``, set on the
supernet). Work that needs no gradient exchange (scoring architectures, seeds trained from scratch) is
split instead (``map_shared``). Rank 0 alone writes files. A failing process ends the run: torchrun stops
the others. A process started without torchrun is rank 0 of a world of 1, and nothing here changes it.
"""
from __future__ import annotations

import datetime
import os
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
    return rank() == 0


def init(timeout_minutes: float = 30.0) -> bool:
    """Join the process group that torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); False, and
    nothing done, without it. NCCL for CUDA tensors where CUDA exists, gloo for CPU tensors (Θ lives on the host)."""
    if active() or not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")):
        return active()
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return True


def close():
    if active():
        dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This process's device: under torchrun, ``cuda`` means cuda:<local rank>, one GPU per process."""
    if device.type != "cuda" or not active():
        return device
    count, local = torch.cuda.device_count(), int(os.environ.get("LOCAL_RANK", "0"))
    if local >= count:
        raise ValueError(f"this node runs more processes than it has GPUs ({count}): lower --nproc_per_node")
    if device.index is not None and device.index != local:
        raise ValueError(f"--device {device} under torchrun: each process takes the GPU of its local rank; "
                         f"pass --device cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def shard(t: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (contiguous, as equal as the batch allows)."""
    return t if world() == 1 else t.tensor_split(world())[rank()]


def average_(tensors: Sequence[torch.Tensor]):
    """Average tensors over the processes in place, in one all-reduce (a no-op in one process)."""
    tensors = list(tensors)
    if world() > 1 and tensors:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        for t, part in zip(tensors, (flat / world()).split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))


def average_grads(params) -> None:
    """Average the gradients of ``params``: every process ran the same sub-network, so the same parameters hold a
    gradient everywhere, in the same order."""
    average_([p.grad for p in params if p.grad is not None])


def mean(value: float, device: torch.device) -> float:
    """The mean of a scalar over the processes (a per-epoch loss, say)."""
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    average_([t])
    return float(t)


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


def broadcast(obj):
    """Rank 0's ``obj`` (a small picklable object) on every process."""
    if world() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def map_shared(fn: Callable, items: Sequence) -> list:
    """``[fn(item) for item in items]`` with every world()-th item on each process; every process gets the whole
    list back, in order."""
    mine = {i: fn(items[i]) for i in range(rank(), len(items), world())}
    if world() == 1:
        return [mine[i] for i in range(len(items))]
    parts: list = [None] * world()
    dist.all_gather_object(parts, mine)
    done = {i: r for part in parts for i, r in part.items()}
    return [done[i] for i in range(len(items))]
