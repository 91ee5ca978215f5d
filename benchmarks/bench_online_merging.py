"""DPO step time and memory: torch AdamW vs OnDARE vs OnTIES on the same small Qwen2 model, in one run.

    python benchmarks/bench_online_merging.py                                   # CPU default: ~4.9M parameters
    python benchmarks/bench_online_merging.py --preset qwen2.5-1.5b --device cuda --dtype bfloat16
    python benchmarks/bench_online_merging.py --preset qwen2.5-1.5b --device cuda --dtype bfloat16 --zero3

Each optimizer trains its own copy of the same weights on the same batches. Step times are taken in one process,
one step of each optimizer per round, so that drifts of the machine hit all three alike; the median step and the
ratios to AdamW are printed. On CUDA, peak memory is then measured with each optimizer alone in its own process.
``--zero3`` wraps the policy in a single-rank DeepSpeed ZeRO-3 engine, as ``llamafactory-cli`` does with
``deepspeed: ds_z3_config.json``. The DPO loss is the sigmoid loss against a frozen reference copy.

Targets: OnDARE <= 1.10x and OnTIES <= 1.25x AdamW's step time; persistent extra memory <= 10 % of one fp32 copy
of the trainable parameters at p <= 0.05; on GPU, OnDARE's peak memory <= 1.15x AdamW's. Also measured: top-p
selection on the largest tensor by argsort (what the reference OnTIES does every step) vs the selection used here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig
from sfmed_lf.merging.layout import zero3_layouts
from sfmed_lf.merging.optimizer import OnlineMergingAdamW
from sfmed_lf.merging.sparsify import magnitude_threshold
from sfmed_lf.merging.task_vector import TaskVectorSource
from sfmed_lf.utils.io import atomic_write_text

PRESETS = {
    "cpu-small": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
    },
    # Qwen2.5-1.5B's architecture with random weights (no download).
    "qwen2.5-1.5b": {
        "vocab_size": 151936,
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
    },
}
METHODS = ("adamw", "ondare", "onties")
TARGETS = {
    "ondare_step_ratio": 1.10,
    "onties_step_ratio": 1.25,
    "extra_memory_fraction": 0.10,
    "ondare_peak_memory_ratio": 1.15,
}


def dpo_loss(policy, reference, chosen, rejected, beta=0.1) -> torch.Tensor:
    def logps(model, ids):
        logits = model(input_ids=ids).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2).sum(-1)

    with torch.no_grad():
        ref_margin = logps(reference, chosen) - logps(reference, rejected)
    margin = logps(policy, chosen) - logps(policy, rejected)
    return -F.logsigmoid(beta * (margin - ref_margin)).mean()


def make_checkpoints(config: Qwen2Config, directory: Path, dtype: torch.dtype) -> tuple[Path, Path]:
    """theta_base (random) and theta_sft = theta_base + small noise, saved as safetensors."""
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config).to(dtype)
    sft = copy.deepcopy(base)
    with torch.no_grad():
        for param in sft.parameters():
            param.add_(torch.randn_like(param) * 1e-3)
    paths = directory / "base", directory / "sft"
    for model, path in zip((base, sft), paths, strict=True):
        model.save_pretrained(path, safe_serialization=True)
    return paths


def build_optimizer(method: str, model, keep_prob: float, base: Path, sft: Path) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if method == "adamw":
        return torch.optim.AdamW([p for _, p in named], lr=1e-5, weight_decay=0.01)
    config = OnlineMergingConfig(MergeMethod(method), keep_prob=keep_prob, alpha=1e-4)
    groups = [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]
    return OnlineMergingAdamW(groups, config, TaskVectorSource(str(sft), str(base)), lr=1e-5, weight_decay=0.01)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainee:
    """One optimizer's copy of the policy, optionally inside a one-rank DeepSpeed ZeRO-3 engine."""

    def __init__(self, method: str, args: argparse.Namespace, reference: torch.nn.Module) -> None:
        device, dtype = torch.device(args.device), getattr(torch, args.dtype)
        base, sft = Path(args.checkpoints, "base"), Path(args.checkpoints, "sft")
        self.policy = Qwen2ForCausalLM.from_pretrained(sft, torch_dtype=dtype).to(device).train()
        self.optimizer = build_optimizer(method, self.policy, args.keep_prob, base, sft)
        self.reference, self.engine = reference, None
        if args.zero3:
            import deepspeed

            ds_config = {
                "train_micro_batch_size_per_gpu": args.batch_pairs,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 3},
                "bf16": {"enabled": dtype == torch.bfloat16},
                "zero_allow_untested_optimizer": True,
            }
            names = {id(p): n for n, p in self.policy.named_parameters()}
            self.engine, *_ = deepspeed.initialize(model=self.policy, optimizer=self.optimizer, config=ds_config)
            if isinstance(self.optimizer, OnlineMergingAdamW):
                self.optimizer.register_layouts(zero3_layouts(self.engine.optimizer, names))

    def step(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        if self.engine is not None:
            self.engine.backward(dpo_loss(self.engine, self.reference, chosen, rejected))
            self.engine.step()
        else:
            dpo_loss(self.policy, self.reference, chosen, rejected).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def setup_process(args: argparse.Namespace) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.zero3:
        import deepspeed

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    sft = Path(args.checkpoints, "sft")
    reference = Qwen2ForCausalLM.from_pretrained(sft, torch_dtype=dtype).to(device).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    vocab = reference.config.vocab_size
    batches = [
        torch.randint(0, vocab, (2, args.batch_pairs, args.seq_len), generator=generator)
        for _ in range(args.warmup + args.steps)
    ]
    return reference, batches


def run_timing(args: argparse.Namespace) -> dict:
    """All three optimizers in this process, one step of each per round, so machine drift hits them alike."""
    device = torch.device(args.device)
    reference, batches = setup_process(args)
    trainees = {method: Trainee(method, args, reference) for method in METHODS}
    step_times: dict[str, list[float]] = {m: [] for m in METHODS}
    for index, batch in enumerate(batches):
        chosen, rejected = batch.to(device)
        for method, trainee in trainees.items():
            synchronize(device)
            start = time.perf_counter()
            trainee.step(chosen, rejected)
            synchronize(device)
            if index >= args.warmup:  # warm-up includes building tau from the checkpoints
                step_times[method].append(time.perf_counter() - start)
    # The reference copy is never partitioned (ZeRO-3 leaves the policies' parameters as placeholders).
    trainable = sum(p.numel() for p in reference.parameters())
    largest = max(reference.parameters(), key=lambda p: p.numel()).detach().reshape(-1).float()
    return {
        "median_step_s": {m: statistics.median(t) for m, t in step_times.items()},
        "trainable_parameters": trainable,
        "extra_memory_fraction": {
            m: trainees[m].optimizer.persistent_merge_bytes() / (4 * trainable) for m in ("ondare", "onties")
        },
        "top_p_selection_on_largest_tensor": topk_selection_times(largest, args.keep_prob),
    }


def run_peak_memory_worker(args: argparse.Namespace) -> dict:
    """One optimizer alone in this process, so that the CUDA peak is its own."""
    device = torch.device(args.device)
    reference, batches = setup_process(args)
    trainee = Trainee(args.worker, args, reference)
    torch.cuda.reset_peak_memory_stats()
    for batch in batches[: args.warmup + 2]:
        chosen, rejected = batch.to(device)
        trainee.step(chosen, rejected)
    return {"peak_memory_bytes": torch.cuda.max_memory_allocated()}


def topk_selection_times(largest: torch.Tensor, keep_prob: float, repeats: int = 3) -> dict[str, float]:
    keep = max(1, int(keep_prob * largest.numel()))

    def by_argsort():
        order = torch.argsort(largest.abs(), descending=True)[:keep]
        mask = torch.zeros_like(largest, dtype=torch.bool)
        mask[order] = True
        return mask

    def by_threshold():
        magnitudes = largest.abs()
        return magnitudes >= magnitude_threshold(magnitudes, keep_prob, seed=0, name="x")

    times = {"numel": largest.numel()}
    for label, select in (("argsort_s", by_argsort), ("threshold_s", by_threshold)):
        select()
        start = time.perf_counter()
        for _ in range(repeats):
            select()
        times[label] = (time.perf_counter() - start) / repeats
    return times


def run_all(args: argparse.Namespace, argv: list[str]) -> dict:
    config = Qwen2Config(**PRESETS[args.preset], tie_word_embeddings=False, max_position_embeddings=4096)
    with tempfile.TemporaryDirectory() as checkpoints:
        make_checkpoints(config, Path(checkpoints), getattr(torch, args.dtype))
        args.checkpoints = checkpoints
        timing = run_timing(args)
        peak = {}
        if torch.device(args.device).type == "cuda":
            for method in METHODS:
                output = Path(checkpoints, f"{method}.json")
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *argv,
                        "--worker",
                        method,
                        "--checkpoints",
                        checkpoints,
                        "--worker-output",
                        str(output),
                    ],
                    check=True,
                )
                peak[method] = json.loads(output.read_text())["peak_memory_bytes"]
    median = timing["median_step_s"]
    results = {
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "zero3": args.zero3,
        "keep_prob": args.keep_prob,
        "batch_pairs": args.batch_pairs,
        "seq_len": args.seq_len,
        "timed_steps": args.steps,
        **timing,
        "ondare_step_ratio": median["ondare"] / median["adamw"],
        "onties_step_ratio": median["onties"] / median["adamw"],
        "reference_dense_tau_fraction": 1.0,
    }
    if peak:
        results["peak_memory_bytes"] = peak
        results["peak_memory_ratio"] = {m: peak[m] / peak["adamw"] for m in METHODS}
    return results


def report(args: argparse.Namespace, results: dict) -> None:
    extra, median = results["extra_memory_fraction"], results["median_step_s"]
    mode = " ZeRO-3" if args.zero3 else ""
    print(
        f"{args.preset} on {args.device}{mode} ({results['trainable_parameters'] / 1e6:.1f}M parameters, "
        f"{args.dtype}, p={args.keep_prob})"
    )
    for method in METHODS:
        line = (
            f"  {method:<7} median step {median[method] * 1e3:8.1f} ms  ratio {median[method] / median['adamw']:.3f}x"
        )
        if method in extra:
            line += f"  persistent extra memory {extra[method]:.3f} of an fp32 copy"
        if "peak_memory_ratio" in results:
            line += (
                f"  peak {results['peak_memory_bytes'][method] / 2**30:.2f} GiB "
                f"({results['peak_memory_ratio'][method]:.3f}x)"
            )
        print(line)
    if selection := results.get("top_p_selection_on_largest_tensor"):
        print(
            f"  top-p selection on {selection['numel']:,} entries: argsort {selection['argsort_s'] * 1e3:.1f} ms, "
            f"threshold {selection['threshold_s'] * 1e3:.1f} ms "
            f"({selection['argsort_s'] / selection['threshold_s']:.1f}x faster)"
        )
    checks = {
        "OnDARE step <= 1.10x AdamW": results["ondare_step_ratio"] <= TARGETS["ondare_step_ratio"],
        "OnTIES step <= 1.25x AdamW": results["onties_step_ratio"] <= TARGETS["onties_step_ratio"],
    }
    if args.keep_prob <= 0.05:
        checks["extra memory <= 10 % at p <= 0.05"] = max(extra.values()) <= TARGETS["extra_memory_fraction"]
    if "peak_memory_ratio" in results:
        checks["OnDARE peak memory <= 1.15x AdamW"] = (
            results["peak_memory_ratio"]["ondare"] <= TARGETS["ondare_peak_memory_ratio"]
        )
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    results["targets_met"] = checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--zero3", action="store_true", help="wrap the policy in a one-rank DeepSpeed ZeRO-3 engine")
    parser.add_argument("--keep-prob", type=float, default=0.05)
    parser.add_argument("--batch-pairs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output", default="benchmarks/results/online_merging.json")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        atomic_write_text(args.worker_output, json.dumps(run_peak_memory_worker(args)))
        return
    results = run_all(args, sys.argv[1:])
    report(args, results)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
