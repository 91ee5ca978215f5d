"""torchrun worker of tests/test_fsdp_merging.py: online merging under FSDP1 and FSDP2 on CPU ranks over gloo.

    torchrun --nproc_per_node 2 tests/fsdp_merging_worker.py CHECKPOINTS_DIR OUTPUT_JSON

Each rank trains a small model on its half of every batch; FSDP averages the gradients, so the merged steps must
end at the weights of one process training on whole batches. Rank 0 writes, per case, the largest absolute
difference from that reference (and from an uninterrupted run for the checkpoint cases) to OUTPUT_JSON.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from sfmed_lf.merging.config import OnlineMergingConfig
from sfmed_lf.merging.layout import checkpoint_name, fsdp1_layouts
from sfmed_lf.merging.optimizer import OnlineMergingAdamW
from sfmed_lf.merging.task_vector import TaskVectorSource

VOCAB, WIDTH, HIDDEN, SEQUENCE, BATCH = 37, 24, 41, 6, 8
CONFIGS = {
    "ondare-p0.3": {"method": "ondare", "keep_prob": 0.3, "alpha": 0.05},
    "onties-p1": {"method": "onties", "keep_prob": 1.0, "alpha": 0.05},
}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(WIDTH)
        self.up = nn.Linear(WIDTH, HIDDEN)
        self.down = nn.Linear(HIDDEN, WIDTH)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.down(torch.relu(self.up(self.norm(hidden))))


class TinyLM(nn.Module):
    """Odd sizes, so that shards split parameters unevenly (and some ranks hold none of a small one)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens)
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(hidden)


def initial_model() -> TinyLM:
    torch.manual_seed(0)
    return TinyLM()


def write_checkpoints(directory: Path) -> None:
    """theta_base = the initial model minus noise, theta_sft = the initial model (the policy starts from it)."""
    from safetensors.torch import save_file

    sft = {name: tensor.detach().clone() for name, tensor in initial_model().state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    base = {name: tensor - 0.05 * torch.randn(tensor.shape, generator=generator) for name, tensor in sft.items()}
    for role, tensors in (("sft", sft), ("base", base)):
        (directory / role).mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(directory / role / "model.safetensors"))


def batch(step: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQUENCE), generator=torch.Generator().manual_seed(100 + step))


def loss_of(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def make_optimizer(model: nn.Module, config: dict, checkpoints: Path) -> OnlineMergingAdamW:
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    return OnlineMergingAdamW(
        [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}],
        OnlineMergingConfig(**config, seed=7),
        TaskVectorSource(str(checkpoints / "sft"), str(checkpoints / "base")),
        lr=0.02,
        weight_decay=0.01,
    )


def train(model: nn.Module, optimizer: OnlineMergingAdamW, steps: range, sharded: bool) -> None:
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    for step in steps:
        tokens = batch(step)
        per_rank = BATCH // world
        loss_of(model, tokens[rank * per_rank : (rank + 1) * per_rank]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def fsdp1(model: nn.Module, use_orig_params: bool) -> nn.Module:
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return FullyShardedDataParallel(
        model,
        auto_wrap_policy=ModuleWrapPolicy({Block}),
        use_orig_params=use_orig_params,
        device_id=torch.device("cpu"),
    )


def fsdp2(model: nn.Module) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:
        fully_shard(block)
    return fully_shard(model)


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, under its checkpoint name, on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False))
    return {checkpoint_name(name): tensor.detach().clone() for name, tensor in state.items()}


LAYOUTS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "fsdp1-orig-params": lambda model: fsdp1(model, use_orig_params=True),
    "fsdp1-flat-params": lambda model: fsdp1(model, use_orig_params=False),
    "fsdp2": fsdp2,
}


def sharded_run(layout: str, config: dict, checkpoints: Path, steps: range, resume_from: Path | None = None):
    model = LAYOUTS[layout](initial_model())
    optimizer = make_optimizer(model, config, checkpoints)
    if layout.startswith("fsdp1"):
        optimizer.register_layouts(fsdp1_layouts(model))
    if resume_from is not None:
        load_checkpoint(model, optimizer, resume_from)
    train(model, optimizer, steps, sharded=True)
    return model, optimizer


def save_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(directory))


def load_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)  # initializes the optimizer's state first
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def largest_difference(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    return max(float((actual[name] - expected[name]).abs().max()) for name in expected)


def main(checkpoints: Path, output: Path) -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    results: dict[str, float] = {}
    for config_name, config in CONFIGS.items():
        single = initial_model()
        train(single, make_optimizer(single, config, checkpoints), range(5), sharded=False)
        reference = {checkpoint_name(n): p.detach().clone() for n, p in single.named_parameters()}
        start = {checkpoint_name(n): p.detach().clone() for n, p in initial_model().named_parameters()}
        results[f"moved/{config_name}"] = largest_difference(reference, start)
        for layout in LAYOUTS:
            model, _ = sharded_run(layout, config, checkpoints, range(5))
            results[f"{layout}/{config_name}"] = largest_difference(full_weights(model), reference)
    config = CONFIGS["ondare-p0.3"]
    for layout in ("fsdp1-orig-params", "fsdp2"):
        straight, _ = sharded_run(layout, config, checkpoints, range(6))
        first, first_optimizer = sharded_run(layout, config, checkpoints, range(3))
        directory = checkpoints / f"dcp-{layout}"
        save_checkpoint(first, first_optimizer, directory)
        dist.barrier()
        with torch.random.fork_rng():
            torch.manual_seed(1234 + dist.get_rank())  # the global RNG must not matter
            resumed, _ = sharded_run(layout, config, checkpoints, range(3, 6), resume_from=directory)
        results[f"resume/{layout}"] = largest_difference(full_weights(resumed), full_weights(straight))
    if dist.get_rank() == 0:
        output.write_text(json.dumps(results, indent=2) + "\n")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    if len(sys.argv) == 2:  # prepare: write the two checkpoints
        write_checkpoints(Path(sys.argv[1]))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
