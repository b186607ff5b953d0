"""What a step does with CUDA tensors, seen from the dispatcher; and fake CUDA, on a machine without a GPU.

``Recorder`` (a TorchDispatchMode) watches every operator that touches a CUDA tensor: it records each copy between
host and device in ``transfers``, and in ``problems`` a host tensor among a CUDA operator's inputs, a
``generator=`` of another device, and a value read back to the host (``.item()``, ``.tolist()``, ``bool()``).

``FakeCuda(monkeypatch)`` is a Recorder in which CUDA tensors are FakeTensors (shapes, dtypes and devices, no data)
while host tensors stay real, so that host work (Θ, sampling, the FLOPs term) runs for real. Autocast stays on for
``cuda``, ``pin_memory`` pins nothing but is remembered, and ``data.make_generator`` hands out host generators that
stand for CUDA ones. The backward needs a real CUDA context (pytorch/pytorch#92627): ``backward`` and
``torch.autograd.grad`` raise ``Backward`` with their outputs, which ends a step where its forward ends, and
``backward_copies`` names the device→host copies that backward would make.
"""
from __future__ import annotations

import traceback
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)      # with its index: resolving a bare "cuda" outside fake mode asks the driver
ROOT = Path(__file__).resolve().parents[1]
READ_BACK = (aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default)


@dataclass
class Transfer:
    src: str                   # "cpu" or "cuda"
    dst: str
    non_blocking: bool
    pinned: bool               # from pinned host memory
    out: torch.Tensor          # the copy (its grad_fn makes the backward's copy the other way)
    where: str

    @property
    def blocking(self) -> bool:
        """A host→device copy overlaps only when non_blocking from pinned memory (pageable memory is staged
        synchronously); a device→host copy, only when non_blocking."""
        return not (self.non_blocking and (self.pinned or self.dst == "cpu"))

    def __repr__(self):
        return f"{self.src}→{self.dst}{' blocking' if self.blocking else ''} at {self.where}"


def caller() -> str:
    """The innermost line of the project's own code (not tests/) on the stack."""
    for frame in reversed(traceback.extract_stack()):
        if Path(frame.filename).parent == ROOT:
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    return "?"


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self):
        self.transfers, self.problems, self.ops = [], [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        device = torch.device(kwargs["device"]) if kwargs.get("device") is not None else None
        cuda = (device is not None and device.type == "cuda") or any(t.device.type == "cuda" for t in tensors)
        moves = func is aten._to_copy.default and device is not None and args[0].device.type != device.type
        copies = func is aten.copy_.default and args[0].device.type != args[1].device.type
        if cuda and func in READ_BACK:
            self.problems.append(f"{func} reads a CUDA tensor back to the host, at {caller()}")
        elif cuda and not (moves or copies) and func.namespace != "prim" and any(t.device.type != "cuda" for t in tensors):
            self.problems.append(f"{func}: a host tensor meets a CUDA one, at {caller()}")
        if cuda:
            self.ops.append((func, [t.dtype for t in tensors]))
        out = self.run(func, args, kwargs, cuda)
        if moves or copies:
            src, dst = (args[0], out) if moves else (args[1], args[0])
            blocking = kwargs.get("non_blocking", args[2] if copies and len(args) > 2 else False)
            self.transfers.append(Transfer(src.device.type, dst.device.type, bool(blocking), self.is_pinned(src), dst,
                                           caller()))
        return out

    def run(self, func, args, kwargs, cuda):
        return func(*args, **kwargs)

    def __enter__(self):
        self.generators = Generators(self)      # a Python-level mode: the dispatcher re-wraps generators
        self.generators.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.generators.__exit__(*exc)

    def is_pinned(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and t.is_pinned()

    def generator_device(self, gen: torch.Generator) -> str:
        return gen.device.type

    def to_device(self) -> list[Transfer]:
        return [t for t in self.transfers if (t.src, t.dst) == ("cpu", "cuda")]

    def to_host(self) -> list[Transfer]:
        return [t for t in self.transfers if (t.src, t.dst) == ("cuda", "cpu")]

    def backward_copies(self, outputs) -> list[Transfer]:
        """The host→device copies whose gradient a backward from ``outputs`` brings back: one device→host copy each
        (ToCopyBackward)."""
        seen, todo = set(), [t.grad_fn for t in outputs]
        while todo:
            node = todo.pop()
            if node is not None and node not in seen:
                seen.add(node)
                todo += [n for n, _ in node.next_functions]
        return [t for t in self.to_device() if t.out.grad_fn in seen]


class Generators(TorchFunctionMode):
    """Records in ``recorder.problems`` a generator used for a tensor on another device."""

    def __init__(self, recorder: Recorder):
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for gen in [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Generator)]:
            if isinstance(out, torch.Tensor) and self.recorder.generator_device(gen) != out.device.type:
                self.recorder.problems.append(f"{func.__name__}: a generator of another device, at {caller()}")
        return out


class Backward(Exception):
    """A backward was asked for: the forward half of the step is done."""

    def __init__(self, outputs):
        super().__init__("backward")
        self.outputs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


class FakeCuda(Recorder):
    def __init__(self, monkeypatch):
        super().__init__()
        import data
        self.fake = FakeTensorMode(allow_non_fake_inputs=True)
        self.pinned: dict[int, weakref.ref] = {}
        self.cuda_generators: list[torch.Generator] = []
        monkeypatch.setattr(torch.cuda.amp.common, "amp_definitely_not_available", lambda: False)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(data, "make_generator", self.make_generator)
        for owner, name in ((torch.Tensor, "backward"), (torch.autograd, "grad")):
            monkeypatch.setattr(owner, name, self.backward)

    @staticmethod
    def backward(outputs, *args, **kwargs):
        raise Backward(outputs)

    def make_generator(self, device, seed: int) -> torch.Generator:
        """``data.make_generator``: a host generator that stands for one on ``device``."""
        g = torch.Generator().manual_seed(seed)
        if torch.device(device).type == "cuda":
            self.cuda_generators.append(g)
        return g

    def generator_device(self, gen):
        return "cuda" if any(gen is g for g in self.cuda_generators) else gen.device.type

    def is_pinned(self, t):
        return self.pinned.get(id(t), lambda: None)() is t

    def __enter__(self):
        self.fake.__enter__()         # the infra mode under the recorder: CUDA tensors come out fake
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.fake.__exit__(*exc)

    def run(self, func, args, kwargs, cuda):
        if func is aten.is_pinned.default:
            return self.is_pinned(args[0])
        if func is aten._pin_memory.default:
            with unset_fake_temporarily():
                out = args[0].clone()
            self.pinned[id(out)] = weakref.ref(out)
            return out
        if not cuda:                  # host work runs for real
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)
