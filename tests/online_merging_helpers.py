"""Shared pieces of the online-merging unit tests: an in-memory task-vector source, small parameters, seeded
gradients and optimizers built like the trainer builds them."""

from __future__ import annotations

import torch

from sfmed_lf.merging.config import OnlineMergingConfig
from sfmed_lf.merging.optimizer import OnlineMergingAdamW
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import sparsify


class InMemoryTaskVectors:
    """A TaskVectorSource stand-in holding dense tau per name (the real one reads checkpoints, tested apart);
    like the real one, it sparsifies only the requested flat range of a parameter."""

    def __init__(self, taus: dict[str, torch.Tensor]) -> None:
        self.taus = taus
        self.closed = False
        self.requests: list[str] = []

    def numel(self, name: str) -> int:
        return self.taus[name].numel()

    def sparse_slice(self, name, config, *, offset=0, numel=None, device="cpu", dtype=torch.float32):
        self.requests.append(name)
        flat = self.taus[name].reshape(-1).to(torch.float32)
        tau = flat[offset : flat.numel() if numel is None else offset + numel].clone()
        positions, values = sparsify(tau, config, name=name, stream="tau", offset=offset, param_numel=flat.numel())
        return SparseDelta.from_positions(tau.numel(), positions, values.to(dtype))

    def close(self) -> None:
        self.closed = True


def make_params(seed: int = 0) -> list[tuple[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"layer.weight": (32, 16), "layer.bias": (32,), "head.weight": (8, 32)}
    return [(name, torch.randn(shape, generator=generator)) for name, shape in shapes.items()]


def grads_for(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=generator).to(p.dtype) for p in params]


def run_optimizer(optimizer: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for step in steps:
        for param, grad in zip(params, grads_for(step, params), strict=True):
            param.grad = grad
        optimizer.step()


def random_taus(named, seed: int = 5, scale: float = 0.1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(param.shape, generator=generator) * scale for name, param in named}


def merging_optimizer(named, config: OnlineMergingConfig, taus=None, lr=1e-2, weight_decay=0.1):
    """Two groups like the trainer's (decay / no decay), with names."""
    params = [p for _, p in named]
    groups = [
        {"params": params[:2], "param_names": [n for n, _ in named[:2]], "weight_decay": weight_decay},
        {"params": params[2:], "param_names": [n for n, _ in named[2:]], "weight_decay": 0.0},
    ]
    source = InMemoryTaskVectors(taus if taus is not None else random_taus(named))
    optimizer = OnlineMergingAdamW(
        groups, config=config, task_vector_source=source, lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=weight_decay
    )
    return optimizer, source


def one_group_optimizer(named, config: OnlineMergingConfig, taus, lr=1e-2, weight_decay=0.0) -> OnlineMergingAdamW:
    return OnlineMergingAdamW(
        [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}],
        config,
        InMemoryTaskVectors(taus),
        lr=lr,
        betas=(0.9, 0.99),
        eps=1e-8,
        weight_decay=weight_decay,
    )
