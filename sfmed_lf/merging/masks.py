"""Random keep-masks that are a pure function of (seed, stream, parameter name, element index).

Every data-parallel rank must drop the same entries, or the replicas drift apart. Instead of a shared generator
whose state advances with every draw, each parameter's index space is cut into fixed chunks of ``MASK_CHUNK``
elements, and each chunk's uniforms come from a generator seeded with a hash of (seed, stream, name, chunk).
Consequences:
- identical masks on every rank, with no communication;
- a slice [offset, offset + n) of a parameter (a ZeRO/FSDP shard) regenerates exactly its part of the full
  parameter's mask, so masks do not depend on the partition layout;
- resuming at step t regenerates step t's masks; nothing random has to be checkpointed.
The uniforms come from PyTorch's generator of the tensor's device type, so CPU and CUDA runs draw different masks.
"""

from __future__ import annotations

import hashlib

import torch

MASK_CHUNK = 1 << 22


def chunk_seed(seed: int, stream: str, name: str, chunk: int) -> int:
    digest = hashlib.blake2b(f"{seed}\x1f{stream}\x1f{name}\x1f{chunk}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def keyed_uniform(
    numel: int, *, seed: int, stream: str, name: str, offset: int = 0, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Uniforms in [0, 1) for elements [offset, offset + numel) of parameter ``name``'s index space."""
    device = torch.device(device)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    generator = torch.Generator(device=device)
    end = offset + numel
    first_chunk, last_chunk = offset // MASK_CHUNK, (end - 1) // MASK_CHUNK
    for chunk in range(first_chunk, last_chunk + 1):
        chunk_start = chunk * MASK_CHUNK
        lo, hi = max(offset, chunk_start), min(end, chunk_start + MASK_CHUNK)
        generator.manual_seed(chunk_seed(seed, stream, name, chunk))
        # Draw the chunk up to `hi` so that the values at lo..hi are the same whatever slice asked for them.
        drawn = torch.rand(hi - chunk_start, generator=generator, device=device)
        out[lo - offset : hi - offset] = drawn[lo - chunk_start :]
    return out


def bernoulli_keep_mask(
    numel: int,
    keep_prob: float,
    *,
    seed: int,
    stream: str,
    name: str,
    offset: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Boolean mask, True with probability ``keep_prob`` independently per element (see module docstring)."""
    return keyed_uniform(numel, seed=seed, stream=stream, name=name, offset=offset, device=device) < keep_prob
