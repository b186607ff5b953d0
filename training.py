"""How a network is trained, one step at a time: the pieces the search (``search.py``), the evaluation
supernet (``evaluate.py``) and training from scratch (``scratch.py``) share.

* ``SGDSettings``: SGD with Nesterov momentum, the optimiser of every weight update;
* ``train_step``: one SGD step on the cross-entropy of one forward or several (the sandwich rule),
  returning the loss without a host sync; ``autocast``: bf16 where asked for;
* ``cosine_lr``: linear warmup, then cosine decay to 0;
* ``check_loss`` and ``Diverged``: the divergence rule, applied once per epoch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def setting(default, help: str):
    """A settings field with its description (a command line shows it as the flag's help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class SGDSettings:
    """SGD with Nesterov momentum: the optimiser of every weight update (search, evaluation, from scratch)."""

    lr: float = setting(0.05, "peak SGD learning rate")
    momentum: float = setting(0.9, "SGD Nesterov momentum")
    weight_decay: float = setting(5e-4, "SGD weight decay")

    def sgd(self, params) -> torch.optim.SGD:
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, nesterov=self.momentum > 0,
                               weight_decay=self.weight_decay)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where asked for (CUDA runs); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(forwards: Callable | Sequence[Callable], optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, lr: float, amp: bool = False, label_smoothing: float = 0.0,
               sync: Callable[[], None] | None = None) -> torch.Tensor:
    """One SGD step at learning rate ``lr`` on the cross-entropy of one forward, or the sum over several
    (the sandwich rule); returns the mean loss without a host sync. ``sync`` runs between the backward
    passes and the step (several processes: it averages the gradients)."""
    forwards = [forwards] if callable(forwards) else list(forwards)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    for forward in forwards:          # backward one graph at a time: the memory of a single forward
        with autocast(x.device, amp):
            loss = F.cross_entropy(forward(x).float(), y, label_smoothing=label_smoothing)
        loss.backward()
        total += loss.detach()
    if sync is not None:
        sync()
    optimizer.step()
    return total / len(forwards)


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``base`` to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


class Diverged(Exception):
    """Training diverged; the message is one line: what diverged, and which setting to change."""


def check_loss(losses: Sequence[float], num_classes: int, what: str, hint: str, far: float = 3.0) -> bool:
    """Diverged if the last epoch mean loss is not finite or the last two exceed far·ln C; else if the last does."""
    chance, last = math.log(max(2, num_classes)), losses[-1]
    if not math.isfinite(last) or (len(losses) > 1 and min(losses[-2:]) > far * chance):
        raise Diverged(f"training diverged: {what} is {last:.3g} in epoch {len(losses)} (chance is "
                       f"ln({num_classes}) = {chance:.2f}): {hint}")
    return last > far * chance
