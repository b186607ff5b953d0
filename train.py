"""Training a network one step at a time: what the search, the evaluation supernet and training from scratch share.

* ``setting`` / ``check_settings``: settings dataclass fields that carry their help and their valid range, and
  one check that applies every range (a ``SettingError`` names the setting);
* ``SGDSettings``: SGD with Nesterov momentum, the optimiser of every weight update;
* ``train_step``: one SGD step on the cross-entropy of one forward or the sum over several (the sandwich
  rule), in bf16 ``autocast`` where asked, without a host sync;
* the learning-rate schedules: ``cosine_lr`` (linear warmup, then cosine to 0) and ``step_lr`` ([4]'s decay);
* the divergence rule: ``check_loss`` raises ``Diverged`` once the epoch loss is hopeless.

It imports only torch and the standard library, so it can be copied out with ``search.py`` and the rest.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


# ---- Settings that carry their own ranges --------------------------------------------------------

def setting(default, help: str = "", range: str | None = None, choices: Sequence[str] | None = None):
    """A settings field with its description and its valid values: ``range`` is an interval such as
    "(0, inf)", "[1, 64]" or "[0, epochs)" (a bound may name another field), ``choices`` a list of strings."""
    meta = {"help": help, "range": range, "choices": tuple(choices) if choices else None}
    return field(default=default, metadata={k: v for k, v in meta.items() if v})


class SettingError(ValueError):
    """A setting outside its range; ``name`` is the field (a command line turns it into its flag)."""

    def __init__(self, name: str, requirement: str, value, refers: Sequence[str] = ()):
        super().__init__(f"{name} must be {requirement}, got {value!r}")
        self.name, self.requirement, self.value, self.refers = name, requirement, value, tuple(refers)


_INTERVAL = re.compile(r"^([\[(])\s*([^,\s]+)\s*,\s*([^\]\s)]+)\s*([\])])$")
_NUMBER = re.compile(r"[-+]?(inf|\d[\d.]*(e[-+]?\d+)?)")


def check_range(obj, name: str, value, interval: str, integer: bool = False):
    """Raise SettingError unless ``value`` lies in ``interval`` ("[lo, hi)" and so on; NaN never does). A bound
    that is not a number is the value of that field of ``obj``."""
    opening, lo, hi, closing = _INTERVAL.match(interval).groups()
    refers = [t for t in (lo, hi) if not _NUMBER.fullmatch(t)]          # the bounds that name a field
    low, high = (float(getattr(obj, t)) if t in refers else float(t) for t in (lo, hi))
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if number and (value >= low if opening == "[" else value > low) and (value <= high if closing == "]" else value < high):
        return
    shown = lambda t, v: f"{t} ({v:g})" if t in refers else t
    if low == 0 and high == math.inf:
        requirement = "a finite positive number" if opening == "(" else "a finite non-negative number"
    else:
        parts = [f"{'at least' if opening == '[' else 'above'} {shown(lo, low)}"] if low > -math.inf else []
        parts += [f"{'at most' if closing == ']' else 'below'} {shown(hi, high)}"] if high < math.inf else []
        requirement = " and ".join((["finite"] if high == math.inf and not integer else []) + parts)
    raise SettingError(name, requirement, value, refers)


def check_settings(obj):
    """Apply every field's declared range and choices (and its type: int, float, bool, str) to a settings
    dataclass; raise SettingError naming the first field that fails."""
    kinds = {"int": int, "float": (int, float), "bool": bool, "str": str}
    for f in dataclasses.fields(obj):
        value, type_name = getattr(obj, f.name), f.type if isinstance(f.type, str) else f.type.__name__
        kind = kinds.get(type_name)
        if kind is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
            raise SettingError(f.name, f"of type {type_name}", value)
        if f.metadata.get("range"):
            check_range(obj, f.name, value, f.metadata["range"], integer=kind is int)
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise SettingError(f.name, f"one of {', '.join(f.metadata['choices'])}", value)


# ---- One SGD step --------------------------------------------------------------------------------

@dataclass
class SGDSettings:
    """SGD with Nesterov momentum: the optimiser of every weight update (search, evaluation, from scratch)."""

    lr: float = setting(0.05, "peak SGD learning rate", "(0, inf)")
    momentum: float = setting(0.9, "SGD Nesterov momentum", "[0, 1)")
    weight_decay: float = setting(5e-4, "SGD weight decay", "[0, inf)")

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


# ---- Learning-rate schedules ---------------------------------------------------------------------

def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``base`` to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


def step_lr(base: float, step: int, milestones: Sequence[int], gamma: float) -> float:
    """[4]'s step decay: ``base`` times ``gamma`` for every milestone step already reached."""
    return base * gamma ** sum(step >= m for m in milestones)


# ---- The divergence rule -------------------------------------------------------------------------

class Diverged(Exception):
    """Training diverged; the message is one line: what diverged, and which setting to change."""


def check_loss(losses: Sequence[float], num_classes: int, what: str, hint: str, far: float = 3.0) -> bool:
    """Diverged if the last epoch mean loss is not finite or the last two exceed far·ln C; else whether the
    last one does (a suspect epoch, not worth a checkpoint)."""
    chance, last = math.log(max(2, num_classes)), losses[-1]
    if not math.isfinite(last) or (len(losses) > 1 and min(losses[-2:]) > far * chance):
        raise Diverged(f"training diverged: {what} is {last:.3g} in epoch {len(losses)} (chance is "
                       f"ln({num_classes}) = {chance:.2f}): {hint}")
    return last > far * chance
