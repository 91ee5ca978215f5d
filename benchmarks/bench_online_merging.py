"""DPO step time and memory: torch AdamW vs OnDARE vs OnTIES on the same small Qwen2 model, in one run.

    python benchmarks/bench_online_merging.py                      # CPU default: ~4M-parameter model
    python benchmarks/bench_online_merging.py --preset qwen2.5-1.5b --device cuda   # GPU figures

Every optimizer starts from the same weights and sees the same batches. Rounds are interleaved (one timed step of
each optimizer per round) so that drifts of the machine hit all of them alike; the median step is reported. The
DPO loss is the sigmoid loss against a frozen reference copy, as LLaMA-Factory computes it.

Targets (issue: foundation): OnDARE <= 1.10x and OnTIES <= 1.25x AdamW's step time; persistent extra memory
<= 10 % of one fp32 copy of the trainable parameters at p <= 0.05. Also measured: top-p selection on the largest
tensor by argsort (what the reference OnTIES does every step) vs the selection used here.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig
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
TARGETS = {"ondare_step_ratio": 1.10, "onties_step_ratio": 1.25, "extra_memory_fraction": 0.10}


def dpo_loss(policy, reference, chosen, rejected, beta=0.1) -> torch.Tensor:
    def logps(model, ids):
        logits = model(input_ids=ids).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2).sum(-1)

    with torch.no_grad():
        ref_margin = logps(reference, chosen) - logps(reference, rejected)
    margin = logps(policy, chosen) - logps(policy, rejected)
    return -F.logsigmoid(beta * (margin - ref_margin)).mean()


def make_checkpoints(config: Qwen2Config, directory: Path, dtype: torch.dtype) -> tuple[Path, Path]:
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config).to(dtype)
    sft = copy.deepcopy(base)
    with torch.no_grad():
        for param in sft.parameters():
            param.add_(torch.randn_like(param) * 1e-3)  # what SFT changed
    paths = directory / "base", directory / "sft"
    for model, path in zip((base, sft), paths, strict=True):
        path.mkdir()
        model.config.save_pretrained(path)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"))
    return paths


def build_optimizer(name: str, model, args, checkpoints) -> torch.optim.Optimizer:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW([p for _, p in named], lr=1e-5, weight_decay=0.01)
    base, sft = checkpoints
    config = OnlineMergingConfig(MergeMethod(name), keep_prob=args.keep_prob, alpha=1e-4)
    groups = [{"params": [p for _, p in named], "param_names": [n for n, _ in named]}]
    return OnlineMergingAdamW(groups, config, TaskVectorSource(str(sft), str(base)), lr=1e-5, weight_decay=0.01)


def topk_selection_times(model, keep_prob: float, repeats: int = 3) -> dict[str, float]:
    largest = max(model.parameters(), key=lambda p: p.numel()).detach().reshape(-1)
    keep = max(1, int(keep_prob * largest.numel()))

    def by_argsort():
        order = torch.argsort(largest.abs(), descending=True)[:keep]
        mask = torch.zeros_like(largest, dtype=torch.bool)
        mask[order] = True
        return mask

    def by_threshold():
        return largest.abs() >= magnitude_threshold(largest, keep_prob, seed=0, name="x")

    times = {}
    for label, select in (("argsort_s", by_argsort), ("threshold_s", by_threshold)):
        select()
        synchronize(largest.device)
        start = time.perf_counter()
        for _ in range(repeats):
            select()
        synchronize(largest.device)
        times[label] = (time.perf_counter() - start) / repeats
    times["numel"] = largest.numel()
    return times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--keep-prob", type=float, default=0.05)
    parser.add_argument("--batch-pairs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--output", default="benchmarks/results/online_merging.json")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    config = Qwen2Config(**PRESETS[args.preset], tie_word_embeddings=False, max_position_embeddings=4096)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = make_checkpoints(config, Path(tmp), dtype)
        policy0 = Qwen2ForCausalLM.from_pretrained(checkpoints[1], torch_dtype=dtype).to(device)
        reference = copy.deepcopy(policy0).eval().requires_grad_(False)
        methods = ["adamw", "ondare", "onties"]
        policies = {m: copy.deepcopy(policy0).train() for m in methods}
        del policy0
        optimizers = {m: build_optimizer(m, policies[m], args, checkpoints) for m in methods}
        generator = torch.Generator().manual_seed(0)
        batches = [
            torch.randint(0, config.vocab_size, (2, args.batch_pairs, args.seq_len), generator=generator)
            for _ in range(args.warmup + args.steps)
        ]
        step_times: dict[str, list[float]] = {m: [] for m in methods}
        peak_memory: dict[str, int] = {}
        for index, batch in enumerate(batches):
            chosen, rejected = batch.to(device)
            for method in methods:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                synchronize(device)
                start = time.perf_counter()
                loss = dpo_loss(policies[method], reference, chosen, rejected)
                loss.backward()
                optimizers[method].step()
                optimizers[method].zero_grad(set_to_none=True)
                synchronize(device)
                if index >= args.warmup:  # warm-up includes building tau from the checkpoints
                    step_times[method].append(time.perf_counter() - start)
                    if device.type == "cuda":
                        peak_memory[method] = max(peak_memory.get(method, 0), torch.cuda.max_memory_allocated())
        selection = topk_selection_times(policies["adamw"], args.keep_prob)

    trainable = sum(p.numel() for p in policies["adamw"].parameters())
    median = {m: statistics.median(t) for m, t in step_times.items()}
    extra = {m: optimizers[m].persistent_merge_bytes() / (4 * trainable) for m in ("ondare", "onties")}
    results = {
        "preset": args.preset,
        "device": str(device),
        "dtype": args.dtype,
        "keep_prob": args.keep_prob,
        "trainable_parameters": trainable,
        "batch_pairs": args.batch_pairs,
        "seq_len": args.seq_len,
        "timed_steps": args.steps,
        "median_step_s": median,
        "ondare_step_ratio": median["ondare"] / median["adamw"],
        "onties_step_ratio": median["onties"] / median["adamw"],
        "extra_memory_fraction": extra,
        "reference_dense_tau_fraction": 1.0,
        "peak_memory_bytes": peak_memory or None,
        "peak_memory_ratio": {m: peak_memory[m] / peak_memory["adamw"] for m in peak_memory} or None,
        "top_p_selection_on_largest_tensor": selection,
    }
    print(f"{args.preset} on {device} ({trainable / 1e6:.1f}M parameters, {args.dtype}, p={args.keep_prob})")
    for method in ("adamw", "ondare", "onties"):
        line = f"  {method:<7} median step {median[method] * 1e3:8.1f} ms"
        line += f"  ratio {median[method] / median['adamw']:.3f}x"
        if method in extra:
            line += f"  persistent extra memory {extra[method]:.3f} of an fp32 copy"
        if peak_memory:
            line += f"  peak {peak_memory[method] / 2**30:.2f} GiB ({results['peak_memory_ratio'][method]:.3f}x)"
        print(line)
    print(
        f"  top-p selection on {selection['numel']:,} entries: argsort {selection['argsort_s'] * 1e3:.1f} ms, "
        f"threshold {selection['threshold_s'] * 1e3:.1f} ms "
        f"({selection['argsort_s'] / selection['threshold_s']:.1f}x faster)"
    )
    checks = {
        "OnDARE step <= 1.10x AdamW": results["ondare_step_ratio"] <= TARGETS["ondare_step_ratio"],
        "OnTIES step <= 1.25x AdamW": results["onties_step_ratio"] <= TARGETS["onties_step_ratio"],
        "extra memory <= 10 % at p <= 0.05": args.keep_prob > 0.05
        or max(extra.values()) <= TARGETS["extra_memory_fraction"],
    }
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    results["targets_met"] = checks
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
