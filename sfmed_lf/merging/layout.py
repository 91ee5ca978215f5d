"""Which parameter slices an optimizer tensor holds.

Without sharding, every optimizer tensor is one whole parameter. Sharded training hands the optimizer slices:
- DeepSpeed ZeRO-1/2 (ZeRO-3): one flat fp32 partition per parameter group (sub-group), a concatenation of slices
  of many parameters;
- FSDP1 (``FullyShardedDataParallel``): with ``use_orig_params=True`` every original parameter is a 1-D view of its
  part of the rank's flat shard (possibly empty); without it, the optimizer steps the flat shard itself;
- FSDP2 (``fully_shard``): every parameter is a DTensor whose local tensor holds rows [r0, r1) of the parameter.
A :class:`Segment` names one such slice, so that masks (keyed by parameter name and element index) and tau (read
from the checkpoints by name and offset) line up with the full parameters whatever the layout.

Internals read here:
- DeepSpeed 0.16-0.19 (checked against 0.19.8), ZeRO-1/2 ``DeepSpeedZeroOptimizer``:
  ``single_partition_of_fp32_groups``, ``round_robin_bit16_groups``, ``round_robin_bit16_offsets``,
  ``round_robin_bit16_meta``, ``partition_size``, ``real_dp_process_group``; ZeRO-3
  ``DeepSpeedZeroOptimizer_Stage3``: ``fp32_partitioned_groups_flat``, ``fp16_groups``, ``fp16_partitioned_groups``
  (``ds_tensor.ds_numel``), ``sub_group_process_groups``; parameters' ``ds_numel``;
- torch 2.9 FSDP1: ``FullyShardedDataParallel._handle.flat_param`` with ``_shard_param_infos``, ``_fqns``,
  ``_numels``, ``_params``; ``_handle._use_orig_params``;
- torch 2.9 DTensor: ``torch.distributed.tensor._utils.compute_local_shape_and_global_offset``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

# Module names that wrappers insert into parameter names: DDP's leading ``module.``, torch.compile's ``_orig_mod``,
# FSDP1's ``_fsdp_wrapped_module`` and activation checkpointing's ``_checkpoint_wrapped_module`` (anywhere).
_WRAPPER_NAMES = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def checkpoint_name(parameter_name: str) -> str:
    """A parameter's name as saved on disk, without the module names wrappers insert: the key of its masks and tau."""
    parts = parameter_name.split(".")
    while parts and parts[0] == "module":
        parts.pop(0)
    return ".".join(part for part in parts if part not in _WRAPPER_NAMES)


@dataclass(frozen=True)
class Segment:
    """Elements [start, start + length) of an optimizer tensor are elements [param_offset, param_offset + length)
    of the flattened parameter ``name``, which has ``param_numel`` elements in all."""

    name: str
    start: int
    length: int
    param_offset: int
    param_numel: int


def whole_parameter(name: str, param: torch.Tensor) -> list[Segment]:
    return [Segment(checkpoint_name(name), 0, param.numel(), 0, param.numel())]


def fsdp1_layouts(model: torch.nn.Module) -> dict[int, list[Segment]]:
    """Segments of what FSDP1 hands the optimizer, keyed by id(): each original parameter's local view
    (``use_orig_params=True``; parameters with no element on this rank are left out) or each flat shard."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    layouts: dict[int, list[Segment]] = {}
    for module_name, module in model.named_modules():
        handle = getattr(module, "_handle", None) if isinstance(module, FullyShardedDataParallel) else None
        if handle is None:
            continue
        flat = handle.flat_param
        prefix = checkpoint_name(module_name)
        segments = []
        for index, (info, fqn, numel) in enumerate(zip(flat._shard_param_infos, flat._fqns, flat._numels, strict=True)):
            if not info.in_shard:
                continue
            name = checkpoint_name(f"{prefix}.{fqn}" if prefix else fqn)
            segment = Segment(name, info.offset_in_shard, info.numel_in_shard, info.intra_param_start_idx, numel)
            if handle._use_orig_params:
                layouts[id(flat._params[index])] = [replace(segment, start=0)]
            else:
                segments.append(segment)
        if segments:
            layouts[id(flat)] = segments
    return layouts


def dtensor_segments(name: str, param: torch.Tensor) -> list[Segment]:
    """The segment of a DTensor's local tensor (FSDP2 ``fully_shard``: rows sharded along dim 0, the default)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not all(type(placement) in (Shard, Replicate) for placement in param.placements) or any(
        isinstance(placement, Shard) and placement.dim != 0 for placement in param.placements
    ):
        raise NotImplementedError(
            f"online merging: parameter {name} is a DTensor with placements {param.placements}; only sharding along "
            "dim 0 (FSDP2's default) keeps each local tensor one contiguous slice of the parameter."
        )
    local_shape, global_offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    row = math.prod(param.shape[1:])
    return [Segment(checkpoint_name(name), 0, math.prod(local_shape), global_offset[0] * row, param.numel())]


def zero12_layouts(zero_optimizer: Any, names: Mapping[int, str]) -> dict[int, list[Segment]]:
    """Segments of each rank-local fp32 partition of a ZeRO-1/2 optimizer, keyed by id() of the partition.

    ``names`` maps id() of each model parameter to its name."""
    layouts = {}
    for group, flat in enumerate(zero_optimizer.single_partition_of_fp32_groups):
        rank = dist.get_rank(group=zero_optimizer.real_dp_process_group[group])
        size = int(zero_optimizer.partition_size[group])
        begin, end = rank * size, (rank + 1) * size
        segments = []
        for param, offset, meta in zip(
            zero_optimizer.round_robin_bit16_groups[group],
            zero_optimizer.round_robin_bit16_offsets[group],
            zero_optimizer.round_robin_bit16_meta[group],
            strict=True,
        ):
            lo, hi = max(offset, begin), min(offset + meta.numel(), end)
            if lo < hi:
                name = checkpoint_name(names[id(param)])
                segments.append(Segment(name, lo - begin, hi - lo, lo - offset, meta.numel()))
        layouts[id(flat)] = segments
    return layouts


def zero3_layouts(zero_optimizer: Any, names: Mapping[int, str]) -> dict[int, list[Segment]]:
    """Segments of each fp32 sub-group partition of a ZeRO-3 optimizer, keyed by id() of the partition.

    Rank r holds elements [r * n, (r + 1) * n) of every parameter, n = its partition size (zero-padded at the end)."""
    layouts = {}
    for sub_group, flat in enumerate(zero_optimizer.fp32_partitioned_groups_flat):
        rank = dist.get_rank(group=zero_optimizer.sub_group_process_groups[sub_group])
        segments, start = [], 0
        for param, partition in zip(
            zero_optimizer.fp16_groups[sub_group], zero_optimizer.fp16_partitioned_groups[sub_group], strict=True
        ):
            partition_numel = int(partition.ds_numel)
            param_offset = rank * partition_numel
            valid = max(0, min(partition_numel, int(param.ds_numel) - param_offset))
            if valid:
                name = checkpoint_name(names[id(param)])
                segments.append(Segment(name, start, valid, param_offset, int(param.ds_numel)))
            start += partition_numel
        layouts[id(flat)] = segments
    return layouts
