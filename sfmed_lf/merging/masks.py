"""Random keep-masks that are a pure function of (seed, stream, parameter name, element index).

Every data-parallel rank must drop the same entries, or the replicas drift apart. Instead of a shared generator
whose state advances with every draw, each parameter's index space is cut into fixed chunks of ``MASK_CHUNK``
elements, and each chunk's kept positions come from a generator keyed with a hash of (seed, stream, name, chunk).
Consequences:
- identical masks on every rank, with no communication;
- a slice [offset, offset + n) of a parameter (a ZeRO/FSDP shard) regenerates exactly its part of the full
  parameter's mask, so masks do not depend on the partition layout;
- resuming at step t regenerates step t's masks; nothing random has to be checkpointed, and the global RNG (which
  the Trainer saves and restores) is never touched.

A Bernoulli(p) mask is drawn as its kept positions: the gaps between consecutive kept elements of a Bernoulli
process are Geometric(p), so a chunk costs p * its size draws instead of one uniform per element (at p = 0.01,
100x fewer). On the CPU the gaps come from numpy's PCG64 generator seeded with the hash, as
floor(E / -log(1 - p)) + 1 with E ~ Exp(1) (numpy's ziggurat sampler: 3-4x cheaper than torch's ``geometric_``);
on CUDA from torch's generator (``geometric_``). CPU and CUDA runs
therefore draw different masks, each reproducible on its own.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from sfmed_lf.merging.kernels import gaps_to_positions

MASK_CHUNK = 1 << 20


def chunk_seed(seed: int, stream: str, name: str, chunk: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{stream}\x1f{name}\x1f{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _draw_count(keep_prob: float, remaining: int) -> int:
    """Gaps to draw at once so that their sum almost always passes the chunk's end (6 standard deviations)."""
    expected = keep_prob * remaining
    return int(expected + 6.0 * math.sqrt(expected) + 16)


def _chunk_positions_cpu(length: int, keep_prob: float, key: int) -> np.ndarray:
    generator = np.random.Generator(np.random.PCG64(key))
    scale = -1.0 / math.log1p(-keep_prob)
    parts, next_start = [], 0
    while next_start < length:
        exponentials = generator.standard_exponential(_draw_count(keep_prob, length - next_start))
        positions = gaps_to_positions(exponentials, scale, next_start)  # gaps: Geometric(p) on 1, 2, ...
        parts.append(positions)
        next_start = int(positions[-1]) + 1
    positions = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return positions[: np.searchsorted(positions, length)]


def _chunk_positions_torch(length: int, keep_prob: float, key: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(key)
    parts, next_start = [], 0
    while next_start < length:
        gaps = torch.empty(_draw_count(keep_prob, length - next_start), dtype=torch.float64, device=device)
        # a uniform draw of exactly 0 gives an infinite gap, which must not wrap around as an integer
        gaps.geometric_(keep_prob, generator=generator).clamp_(max=length + 1)
        positions = gaps.to(torch.int64).cumsum_(0).add_(next_start - 1)
        parts.append(positions)
        next_start = int(positions[-1]) + 1
    positions = parts[0] if len(parts) == 1 else torch.cat(parts)
    return positions[: int(torch.searchsorted(positions, length))]


def bernoulli_positions(
    numel: int,
    keep_prob: float,
    *,
    seed: int,
    stream: str,
    name: str,
    offset: int = 0,
    param_numel: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Ascending int64 positions (relative to ``offset``) of the kept elements among [offset, offset + numel) of
    parameter ``name``'s index space; each element is kept with probability ``keep_prob``, independently.

    ``param_numel`` is the whole parameter's size (default: the slice reaches its end); it bounds how far the last
    chunk is drawn, so that a small parameter costs about p * its size draws, whatever slice of it is asked for."""
    device = torch.device(device)
    if keep_prob >= 1.0:
        return torch.arange(numel, device=device)
    end = offset + numel
    param_numel = end if param_numel is None else param_numel
    if end > param_numel:
        raise ValueError(f"{name}: slice [{offset}, {end}) lies beyond the parameter's {param_numel} elements.")
    parts = []
    for chunk in range(offset // MASK_CHUNK, (end - 1) // MASK_CHUNK + 1 if numel else 0):
        chunk_start = chunk * MASK_CHUNK
        chunk_length = min(MASK_CHUNK, param_numel - chunk_start)
        key = chunk_seed(seed, stream, name, chunk)
        # The chunk is drawn whole, so that its positions are the same whatever slice of it is asked for.
        if device.type == "cpu":
            positions = torch.from_numpy(_chunk_positions_cpu(chunk_length, keep_prob, key))
        else:
            positions = _chunk_positions_torch(chunk_length, keep_prob, key, device)
        lo, hi = offset - chunk_start, end - chunk_start
        if lo > 0 or hi < chunk_length:
            bounds = torch.searchsorted(positions, torch.tensor([lo, hi], device=device)).tolist()
            positions = positions[bounds[0] : bounds[1]]
        parts.append(positions.sub_(lo) if lo else positions)
    if not parts:
        return torch.empty(0, dtype=torch.int64, device=device)
    return parts[0] if len(parts) == 1 else torch.cat(parts)
