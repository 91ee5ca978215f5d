"""Which parameter slices an optimizer tensor holds.

Without sharding, every optimizer tensor is one whole parameter. Under DeepSpeed ZeRO the inner optimizer sees one
flat fp32 partition per parameter group (ZeRO-1/2) or per sub-group (ZeRO-3) instead: a concatenation of slices of
many parameters. A :class:`Segment` names one such slice, so that masks (keyed by parameter name and element index)
and tau (read from the checkpoints by name and offset) line up with the full parameters whatever the layout.

DeepSpeed internals read here (DeepSpeed 0.16-0.19, checked against 0.19.8):
- ZeRO-1/2 ``DeepSpeedZeroOptimizer``: ``single_partition_of_fp32_groups``, ``round_robin_bit16_groups``,
  ``round_robin_bit16_offsets``, ``round_robin_bit16_meta``, ``partition_size``, ``real_dp_process_group``;
- ZeRO-3 ``DeepSpeedZeroOptimizer_Stage3``: ``fp32_partitioned_groups_flat``, ``fp16_groups``,
  ``fp16_partitioned_groups`` (``ds_tensor.ds_numel``), ``sub_group_process_groups``; parameters' ``ds_numel``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Segment:
    """Elements [start, start + length) of an optimizer tensor are elements [param_offset, param_offset + length)
    of the flattened parameter ``name``."""

    name: str
    start: int
    length: int
    param_offset: int


def whole_parameter(name: str, param: torch.Tensor) -> list[Segment]:
    return [Segment(name, 0, param.numel(), 0)]


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
                segments.append(Segment(names[id(param)], lo - begin, hi - lo, lo - offset))
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
                segments.append(Segment(names[id(param)], start, valid, param_offset))
            start += partition_numel
        layouts[id(flat)] = segments
    return layouts
