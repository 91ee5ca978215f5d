"""End-of-training check that every data-parallel replica holds the same weights.

Online merging draws random masks; if two ranks ever drew different ones, their weights would silently diverge
while DDP keeps averaging gradients. The check hashes every rank's parameters and compares the digests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from sfmed_lf.utils.io import atomic_write_text

REPORT_NAME = "sfmed_replica_check.json"


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class ReplicaConsistencyCallback(TrainerCallback):
    """At the end of training, fail unless all ranks' weights hash alike; rank 0 writes the digests."""

    def on_train_end(self, args, state, control, model=None, **kwargs) -> None:  # noqa: ANN001, ANN003 - HF
        if model is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return
        digests: list[str | None] = [None] * dist.get_world_size()
        dist.all_gather_object(digests, weights_digest(model))
        identical = len(set(digests)) == 1
        if dist.get_rank() == 0:
            report = {"global_step": state.global_step, "identical": identical, "digests": digests}
            atomic_write_text(Path(args.output_dir) / REPORT_NAME, json.dumps(report, indent=2) + "\n")
        if not identical:
            raise RuntimeError(f"data-parallel replicas diverged after step {state.global_step}: {digests}")
