"""The array operations of the sparse steps (selection, gathers, scatter-adds), on numpy or on torch.

A merged step works on the kept entries of each parameter: a few per cent of it, through many small operations.
On the CPU, numpy runs them several times faster than torch: about 1 us of overhead per call instead of 5-10 us,
and its selection (``partition``) and ``flatnonzero`` kernels are 5x and 2x faster than torch's ``kthvalue`` and
``nonzero`` (benchmarks/bench_online_merging.py measures the whole step). So CPU float32/float64 tensors are handled
as numpy views of their memory (no copy); CUDA tensors and CPU half-precision ones (numpy has no bfloat16) through
torch. Both backends expose the same few operations, and the arrays they return support the same operators, so the
merging code is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

Array = Any  # a numpy.ndarray or a torch.Tensor, according to the backend


class NumpyOps:
    """CPU float32/float64 tensors, as numpy views of their memory."""

    name = "numpy"

    @staticmethod
    def view(tensor: torch.Tensor) -> np.ndarray:
        array = (tensor.detach() if tensor.requires_grad else tensor).numpy()
        if not array.flags.c_contiguous:  # reshape would copy, and writes would miss the tensor
            raise ValueError(f"online merging needs contiguous tensors, got strides {tensor.stride()}.")
        return array.reshape(-1)

    @staticmethod
    def as_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array))

    @staticmethod
    def take(array: np.ndarray, positions: np.ndarray) -> np.ndarray:
        return array.take(positions)

    @staticmethod
    def add_at_(array: np.ndarray, positions: np.ndarray, values: np.ndarray) -> None:
        """array[positions] += values (positions unique here; ``add.at`` is the faster of the two in numpy 2)."""
        np.add.at(array, positions, values)

    @staticmethod
    def flatnonzero(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)

    @staticmethod
    def kth_smallest(values: np.ndarray, rank: int) -> float:
        """The ``rank``-th smallest (1-based) of a 1-D array."""
        return float(np.partition(values, rank - 1)[rank - 1])

    @staticmethod
    def greater_equal(values: np.ndarray, bound: float, out: np.ndarray) -> np.ndarray:
        return np.greater_equal(values, bound, out=out)

    @staticmethod
    def cumsum(values: np.ndarray) -> np.ndarray:
        return np.cumsum(values)

    @staticmethod
    def arange(count: int, like: np.ndarray) -> np.ndarray:
        return np.arange(count, dtype=np.int64)

    @staticmethod
    def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
        return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

    @staticmethod
    def repeat(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
        return np.repeat(values, counts)

    @staticmethod
    def searchsorted(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(sorted_values, values)

    @staticmethod
    def where(condition: np.ndarray, then: np.ndarray, otherwise: float) -> np.ndarray:
        return np.where(condition, then, otherwise)

    @staticmethod
    def copysign(magnitudes: np.ndarray, signs: np.ndarray) -> np.ndarray:
        return np.copysign(magnitudes, signs)

    @staticmethod
    def sqrt(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """torch's square root (rounded differently from numpy's in the last bit), so that |delta| is AdamW's."""
        root = torch.sqrt(torch.from_numpy(values), out=None if out is None else torch.from_numpy(out))
        return root.numpy()

    @staticmethod
    def divide(numerators: np.ndarray, denominators: np.ndarray, out: np.ndarray) -> np.ndarray:
        return np.divide(numerators, denominators, out=out)

    @staticmethod
    def abs_(values: np.ndarray) -> np.ndarray:
        return np.abs(values, out=values)

    @staticmethod
    def count_nonzero(values: np.ndarray) -> int:
        return int(np.count_nonzero(values))

    @staticmethod
    def astype(values: np.ndarray, like: np.ndarray) -> np.ndarray:
        return values.astype(like.dtype, copy=False)

    @staticmethod
    def sum64(values: np.ndarray) -> float:
        return float(values.sum(dtype=np.float64))

    @staticmethod
    def index_range(sorted_values: np.ndarray, low: int, high: int) -> tuple[int, int]:
        """Where [low, high) starts and ends in an ascending array."""
        start, end = np.searchsorted(sorted_values, [low, high])
        return int(start), int(end)


class TorchOps:
    """Any other tensor (CUDA, half precision), through torch."""

    name = "torch"

    @staticmethod
    def view(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().view(-1)

    @staticmethod
    def as_tensor(array: torch.Tensor) -> torch.Tensor:
        return array

    @staticmethod
    def take(array: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return array.index_select(0, positions)

    @staticmethod
    def add_at_(array: torch.Tensor, positions: torch.Tensor, values: torch.Tensor) -> None:
        array.scatter_add_(0, positions, values)

    @staticmethod
    def flatnonzero(mask: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(mask).squeeze(1)

    @staticmethod
    def kth_smallest(values: torch.Tensor, rank: int) -> float:
        # half precision widened for kthvalue (exactly); float64 kept as it is (float32 would round the threshold)
        wide = values if values.dtype == torch.float64 else values.float()
        return float(wide.kthvalue(rank).values)

    @staticmethod
    def greater_equal(values: torch.Tensor, bound: float, out: torch.Tensor) -> torch.Tensor:
        return torch.ge(values, bound, out=out)

    @staticmethod
    def cumsum(values: torch.Tensor) -> torch.Tensor:
        return values.cumsum(0)

    @staticmethod
    def arange(count: int, like: torch.Tensor) -> torch.Tensor:
        return torch.arange(count, device=like.device)

    @staticmethod
    def concat(arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return arrays[0] if len(arrays) == 1 else torch.cat(list(arrays))

    @staticmethod
    def repeat(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(values, counts)

    @staticmethod
    def searchsorted(sorted_values: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(sorted_values, values)

    @staticmethod
    def where(condition: torch.Tensor, then: torch.Tensor, otherwise: float) -> torch.Tensor:
        return torch.where(condition, then, otherwise)

    @staticmethod
    def copysign(magnitudes: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        return torch.copysign(magnitudes, signs)

    @staticmethod
    def sqrt(values: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.sqrt(values, out=out)

    @staticmethod
    def divide(numerators: torch.Tensor, denominators: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return torch.div(numerators, denominators, out=out)

    @staticmethod
    def abs_(values: torch.Tensor) -> torch.Tensor:
        return values.abs_()

    @staticmethod
    def count_nonzero(values: torch.Tensor) -> int:
        return int(torch.count_nonzero(values))

    @staticmethod
    def astype(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype)

    @staticmethod
    def sum64(values: torch.Tensor) -> float:
        return float(values.sum(dtype=torch.float64))

    @staticmethod
    def index_range(sorted_values: torch.Tensor, low: int, high: int) -> tuple[int, int]:
        bounds = torch.tensor([low, high], device=sorted_values.device)
        start, end = torch.searchsorted(sorted_values, bounds).tolist()
        return start, end


Ops = type[NumpyOps] | type[TorchOps]


def ops_for(tensor: torch.Tensor) -> Ops:
    """numpy for CPU float32/float64 tensors, torch otherwise."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        return NumpyOps
    return TorchOps
