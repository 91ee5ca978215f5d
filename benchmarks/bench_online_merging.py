"""Online merging side by side: ours (OnDARE, OnTIES) vs the authors' (ODAdamW, OTAdamW) vs torch AdamW.

    python benchmarks/bench_online_merging.py                              # CPU, ~4.9M-parameter Qwen2, p = 0.05
    python benchmarks/bench_online_merging.py --official PATH               # + the authors' optimizers, from a clone
    python benchmarks/bench_online_merging.py --threads 2 --keep-prob 0.01
    python benchmarks/bench_online_merging.py --preset qwen2.5-1.5b --device cuda --dtype bfloat16 [--zero3]

PATH is a local clone of https://github.com/QwenLM/online_merging_optimizers (its ``online_merging`` package is
imported from there unmodified; nothing of it ships here). Every peer trains its own copy of the same weights, in one
process, one step of each per round, so that the machine's drifts (other jobs) hit all alike; medians are reported:

1. update statistics, at the same moments (weight decay and alpha 0): the fraction of entries the step moves, the
   slope of the mean update on AdamW's update (over ``--seeds`` mask seeds), and for OnTIES how many kept entries
   ours and the authors' share;
2. the optimizer step alone, on gradients recorded from real DPO steps;
3. the whole DPO step (policy and reference forward, backward, optimizer step);
both as CPU time of the process (with ``--threads 1`` the work itself, whatever else the machine runs: the ratios
use it) and wall time (the ratios use it with more threads);
4. memory: what each optimizer keeps beyond AdamW's moments, in fp32 copies of the trainable parameters (ours: the
   kept entries of tau', 1.5 * p; the authors': a dense tau), and on CUDA each optimizer's peak, alone in a process.

``--zero3`` wraps the policies in a one-rank DeepSpeed ZeRO-3 engine, as ``llamafactory-cli`` does with
``deepspeed: ds_z3_config.json`` (ours and AdamW only). Results: printed as markdown tables and written to --output.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Qwen2Config, Qwen2ForCausalLM

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig
from sfmed_lf.merging.layout import zero3_layouts
from sfmed_lf.merging.optimizer import OnlineMergingAdamW
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
LR, WEIGHT_DECAY, EPS = 1e-5, 0.01, 1e-8
TARGETS = {"ondare": 1.5, "onties": 2.0}  # optimizer step alone, x AdamW foreach


def dpo_loss(policy, reference, chosen, rejected, beta=0.1) -> torch.Tensor:
    def logps(model, ids):
        logits = model(input_ids=ids).logits[:, :-1].float()
        return torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2).sum(-1)

    with torch.no_grad():
        ref_margin = logps(reference, chosen) - logps(reference, rejected)
    margin = logps(policy, chosen) - logps(policy, rejected)
    return -F.logsigmoid(beta * (margin - ref_margin)).mean()


def make_checkpoints(config: Qwen2Config, directory: Path, dtype: torch.dtype) -> None:
    """theta_base (random) and theta_sft = theta_base + small noise, saved as safetensors."""
    torch.manual_seed(0)
    base = Qwen2ForCausalLM(config).to(dtype)
    sft = copy.deepcopy(base)
    with torch.no_grad():
        for param in sft.parameters():
            param.add_(torch.randn_like(param) * 1e-3)
    for model, name in ((base, "base"), (sft, "sft")):
        model.save_pretrained(directory / name, safe_serialization=True)


def load_official(path: str | None) -> dict[str, type] | None:
    """The authors' ODAdamW / OTAdamW from a local clone of QwenLM/online_merging_optimizers."""
    if path is None:
        return None
    sys.path.insert(0, str(Path(path).expanduser().resolve()))
    from online_merging.optimizers import ODAdamW, OTAdamW

    return {"official-ondare": ODAdamW, "official-onties": OTAdamW}


def fused_available(device: str) -> bool:
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return False
    return True


class Peers:
    """Builds each peer's optimizer over a model's parameters (one group, the same hyper-parameters for all)."""

    def __init__(self, args: argparse.Namespace, official: dict[str, type] | None) -> None:
        self.args, self.official = args, official
        self.checkpoints = Path(args.checkpoints)
        self.names = ["adamw-foreach", *(["adamw-fused"] if fused_available(args.device) and not args.zero3 else [])]
        self.names += ["ondare", "onties"]
        if official and not args.zero3:
            self.names += list(official)

    def build(self, name: str, model: torch.nn.Module, alpha: float, weight_decay: float, seed: int = 42):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        keep_prob = self.args.keep_prob
        if name.startswith("adamw"):
            fused = name == "adamw-fused"
            return torch.optim.AdamW(
                params, lr=LR, eps=EPS, weight_decay=weight_decay, foreach=not fused, fused=fused or None
            )
        if name in ("ondare", "onties"):
            config = OnlineMergingConfig(MergeMethod(name), keep_prob=keep_prob, alpha=alpha, seed=seed)
            source = TaskVectorSource(str(self.checkpoints / "sft"), str(self.checkpoints / "base"))
            groups = [{"params": params, "param_names": [n for n, _ in named]}]
            return OnlineMergingAdamW(groups, config, source, lr=LR, eps=EPS, weight_decay=weight_decay)
        optimizer = self.official[name](
            [{"params": params, "weight_decay": weight_decay}],
            lr=LR,
            eps=EPS,
            reserve_p=keep_prob,
            param_name_map={(0, index): n for index, (n, _) in enumerate(named)},
            use_merge=True,
            alpha=alpha,
            rescale=False,
        )
        dtype = getattr(torch, self.args.dtype)
        sft = Qwen2ForCausalLM.from_pretrained(self.checkpoints / "sft", torch_dtype=dtype).to(self.args.device)
        base = Qwen2ForCausalLM.from_pretrained(self.checkpoints / "base", torch_dtype=dtype).to(self.args.device)
        optimizer.init_ref_param_diff(sft, base)
        return optimizer


def extra_memory_fraction(name: str, optimizer: torch.optim.Optimizer, trainable: int) -> float:
    """Bytes kept beyond AdamW's moments, in fp32 copies of the trainable parameters."""
    if isinstance(optimizer, OnlineMergingAdamW):
        return optimizer.persistent_merge_bytes() / (4 * trainable)
    extra = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for key, value in state.items()
        if key not in ("step", "exp_avg", "exp_avg_sq") and torch.is_tensor(value)
    )
    return extra / (4 * trainable)


def load_policy(args: argparse.Namespace) -> torch.nn.Module:
    dtype = getattr(torch, args.dtype)
    return Qwen2ForCausalLM.from_pretrained(Path(args.checkpoints, "sft"), torch_dtype=dtype).to(args.device).train()


def batches(args: argparse.Namespace, vocab: int, count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, vocab, (2, args.batch_pairs, args.seq_len), generator=generator) for _ in range(count)]


def recorded_gradients(args: argparse.Namespace, reference: torch.nn.Module, count: int) -> list[list[torch.Tensor]]:
    """Gradients of real DPO steps on the policy (each from the same weights, different batches)."""
    policy = load_policy(args)
    pool = []
    for chosen, rejected in batches(args, reference.config.vocab_size, count):
        dpo_loss(policy, reference, chosen.to(args.device), rejected.to(args.device)).backward()
        pool.append([param.grad.detach().clone() for param in policy.parameters()])
        policy.zero_grad(set_to_none=True)
    return pool


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(function: Callable[[], object], device: str) -> tuple[float, float]:
    """(CPU time of this process, wall time) of one call, in seconds. With one thread, the CPU time is the work itself
    whatever else the machine runs; with more, it also counts threads waiting for each other, and wall time is the
    measure (interleaving keeps the comparison fair)."""
    synchronize(device)
    cpu, wall = time.process_time(), time.perf_counter()
    function()
    synchronize(device)
    return time.process_time() - cpu, time.perf_counter() - wall


def set_gradients(model: torch.nn.Module, gradients: list[torch.Tensor]) -> None:
    for param, gradient in zip(model.parameters(), gradients, strict=True):
        if param.grad is None:
            param.grad = gradient.clone()
        else:
            param.grad.copy_(gradient)


def update_statistics(args, peers: Peers, pool: list[list[torch.Tensor]]) -> dict[str, dict[str, float]]:
    """Step 3 of each peer from the same weights and moments, with weight decay and alpha 0: update = delta'."""
    probes: dict[str, list[list[torch.Tensor]]] = {}
    for name in peers.names:
        if name == "adamw-fused":
            continue
        seeds = range(args.seeds) if name.endswith("ondare") else range(1)
        probes[name] = []
        for seed in seeds:
            model = load_policy(args)
            optimizer = peers.build(name, model, alpha=0.0, weight_decay=0.0, seed=seed)
            torch.manual_seed(seed)  # the authors' dropout draws from the global RNG
            for gradients in pool[:2]:
                set_gradients(model, gradients)
                optimizer.step()
            before = [p.detach().clone() for p in model.parameters()]
            set_gradients(model, pool[2])
            optimizer.step()
            # kept in host memory: on a GPU, a 1.5B model's probes of every peer do not fit beside the models
            probes[name].append(
                [(p.detach() - b).reshape(-1).cpu() for p, b in zip(model.parameters(), before, strict=True)]
            )
            del model, optimizer, before
    adam = torch.cat(probes["adamw-foreach"][0]).double()
    results = {}
    for name, runs in probes.items():
        updates = [torch.cat(run).double() for run in runs]
        mean = torch.stack(updates).mean(0)
        results[name] = {
            "kept_fraction": statistics.mean(float((u != 0).double().mean()) for u in updates),
            "slope_on_adamw": float((mean * adam).sum() / (adam * adam).sum()),
        }
    if "official-onties" in probes:
        ours, theirs = (torch.cat(probes[name][0]) for name in ("onties", "official-onties"))
        kept_ours, kept_theirs = ours != 0, theirs != 0
        both = kept_ours & kept_theirs
        results["onties"]["kept_shared_with_official"] = float(both.sum() / kept_theirs.sum().clamp(min=1))
        scale = float(adam.abs().max())
        results["onties"]["max_difference_on_shared_over_max_update"] = float(
            (ours[both] - theirs[both]).abs().max() / scale
        )
    return results


def time_optimizer_alone(args, peers: Peers, pool, trainable: int) -> tuple[dict, dict]:
    models = {name: load_policy(args) for name in peers.names}
    optimizers = {
        name: peers.build(name, model, alpha=args.alpha, weight_decay=WEIGHT_DECAY) for name, model in models.items()
    }
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in peers.names}
    for round_index in range(args.warmup + args.rounds):
        for name in peers.names:
            set_gradients(models[name], pool[round_index % len(pool)])
            sample = timed(optimizers[name].step, args.device)
            if round_index >= args.warmup:  # warm-up includes building tau from the checkpoints
                samples[name].append(sample)
    memory = {name: extra_memory_fraction(name, optimizers[name], trainable) for name in peers.names}
    return {name: median_times(times) for name, times in samples.items()}, memory


def time_whole_step(args, peers: Peers, reference: torch.nn.Module) -> dict:
    trainees = {name: Trainee(name, args, peers, reference) for name in peers.names}
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in peers.names}
    for index, (chosen, rejected) in enumerate(batches(args, reference.config.vocab_size, args.warmup + args.steps)):
        chosen, rejected = chosen.to(args.device), rejected.to(args.device)
        for name, trainee in trainees.items():
            sample = timed(lambda t=trainee, c=chosen, r=rejected: t.step(c, r), args.device)
            if index >= args.warmup:
                samples[name].append(sample)
    return {name: median_times(times) for name, times in samples.items()}


def median_times(samples: list[tuple[float, float]]) -> dict[str, float]:
    return {"cpu_s": statistics.median(s[0] for s in samples), "wall_s": statistics.median(s[1] for s in samples)}


class Trainee:
    """One peer's copy of the policy, optionally inside a one-rank DeepSpeed ZeRO-3 engine."""

    def __init__(self, name: str, args: argparse.Namespace, peers: Peers, reference: torch.nn.Module) -> None:
        self.policy = load_policy(args)
        self.optimizer = peers.build(name, self.policy, alpha=args.alpha, weight_decay=WEIGHT_DECAY)
        self.reference, self.engine = reference, None
        if args.zero3:
            import deepspeed

            ds_config = {
                "train_micro_batch_size_per_gpu": args.batch_pairs,
                "gradient_accumulation_steps": 1,
                "zero_optimization": {"stage": 3},
                "bf16": {"enabled": args.dtype == "bfloat16"},
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


def init_process(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.zero3:
        import deepspeed

        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29517", "RANK": "0"}.items():
            os.environ.setdefault(key, value)
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        deepspeed.init_distributed(dist_backend="nccl" if args.device == "cuda" else "gloo")


def run_peak_memory_worker(args: argparse.Namespace, official: dict[str, type] | None) -> dict:
    """One optimizer alone in this process, so that the CUDA peak is its own."""
    init_process(args)
    dtype = getattr(torch, args.dtype)
    reference = Qwen2ForCausalLM.from_pretrained(Path(args.checkpoints, "sft"), torch_dtype=dtype).to(args.device)
    reference.eval().requires_grad_(False)
    trainee = Trainee(args.worker, args, Peers(args, official), reference)
    torch.cuda.reset_peak_memory_stats()
    for chosen, rejected in batches(args, reference.config.vocab_size, 3):
        trainee.step(chosen.to(args.device), rejected.to(args.device))
    return {"peak_memory_bytes": torch.cuda.max_memory_allocated()}


def run_all(args: argparse.Namespace, official: dict[str, type] | None) -> dict:
    init_process(args)
    load_before = os.getloadavg()
    dtype = getattr(torch, args.dtype)
    reference = Qwen2ForCausalLM.from_pretrained(Path(args.checkpoints, "sft"), torch_dtype=dtype).to(args.device)
    reference.eval().requires_grad_(False)
    trainable = sum(p.numel() for p in reference.parameters())
    peers = Peers(args, official)
    pool = recorded_gradients(args, reference, 3)
    skip = args.zero3 or args.skip_statistics
    statistics_ = None if skip else update_statistics(args, peers, pool)
    alone, memory = time_optimizer_alone(args, peers, pool, trainable) if not args.zero3 else ({}, {})
    whole = time_whole_step(args, peers, reference) if args.steps else {}
    results = {
        "preset": args.preset,
        "device": args.device,
        "dtype": args.dtype,
        "threads": args.threads,
        "zero3": args.zero3,
        "keep_prob": args.keep_prob,
        "alpha": args.alpha,
        "trainable_parameters": trainable,
        "batch_pairs": args.batch_pairs,
        "seq_len": args.seq_len,
        "rounds": args.rounds,
        "whole_steps": args.steps,
        "load_average_1min": [load_before[0], os.getloadavg()[0]],
        "peers": peers.names,
        "update_statistics": statistics_,
        "optimizer_step_alone": alone,
        "whole_dpo_step": whole,
        "extra_memory_fraction": memory,
    }
    key = "cpu_s" if args.threads == 1 and args.device == "cpu" else "wall_s"
    results["ratios_measured_on"] = key
    for kind in ("optimizer_step_alone", "whole_dpo_step"):
        times = results[kind]
        if "adamw-foreach" in times:
            base = times["adamw-foreach"][key]
            results[f"{kind}_ratio_to_adamw_foreach"] = {name: t[key] / base for name, t in times.items()}
    return results


def report(results: dict) -> None:
    alone, whole = results["optimizer_step_alone"], results["whole_dpo_step"]
    ratio_alone = results.get("optimizer_step_alone_ratio_to_adamw_foreach", {})
    ratio_whole = results.get("whole_dpo_step_ratio_to_adamw_foreach", {})
    stats, memory = results["update_statistics"] or {}, results["extra_memory_fraction"]
    print(
        f"{results['preset']} on {results['device']}{' ZeRO-3' if results['zero3'] else ''}: "
        f"{results['trainable_parameters'] / 1e6:.1f}M parameters, {results['dtype']}, p = {results['keep_prob']}, "
        f"alpha = {results['alpha']}, {results['threads']} thread(s), load average "
        f"{results['load_average_1min'][0]:.1f} -> {results['load_average_1min'][1]:.1f}"
    )
    measure = "CPU" if results["ratios_measured_on"] == "cpu_s" else "wall"
    print(
        f"| peer | kept fraction | slope on AdamW | step alone: CPU ms, wall ms (x foreach, {measure}) "
        f"| whole DPO step: CPU ms, wall ms (x foreach, {measure}) | extra memory (fp32 copy = 1) |"
    )
    print("|---|---|---|---|---|---|")
    for name in results["peers"]:
        stat = stats.get(name, {})
        cells = [
            name,
            f"{stat['kept_fraction']:.4f}" if stat else "",
            f"{stat['slope_on_adamw']:.3f}" if stat else "",
            _time_cell(alone, ratio_alone, name, 1),
            _time_cell(whole, ratio_whole, name, 0),
            f"{memory[name]:.4f}" if name in memory else "",
        ]
        print("| " + " | ".join(cells) + " |")
    if "kept_shared_with_official" in stats.get("onties", {}):
        onties = stats["onties"]
        print(
            f"OnTIES vs the authors' OTAdamW: {onties['kept_shared_with_official']:.6f} of their kept entries kept by "
            f"ours too; largest difference there {onties['max_difference_on_shared_over_max_update']:.1e} of the "
            "largest update"
        )
    for name, target in TARGETS.items():
        if name in ratio_alone:
            verdict = "PASS" if ratio_alone[name] <= target else "MISS"
            print(f"{verdict}  {name} step alone {ratio_alone[name]:.2f}x AdamW foreach (target <= {target}x)")


def _time_cell(times: dict, ratios: dict, name: str, digits: int) -> str:
    if name not in times:
        return ""
    cpu, wall = times[name]["cpu_s"] * 1e3, times[name]["wall_s"] * 1e3
    return f"{cpu:.{digits}f}, {wall:.{digits}f} (**{ratios[name]:.2f}x**)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--zero3", action="store_true", help="wrap the policy in a one-rank DeepSpeed ZeRO-3 engine")
    parser.add_argument("--official", help="a local clone of QwenLM/online_merging_optimizers, to compare with")
    parser.add_argument("--keep-prob", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=1e-7, help="default: the authors' script")
    parser.add_argument("--seeds", type=int, default=8, help="mask seeds of the OnDARE update statistics")
    parser.add_argument("--batch-pairs", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="optimizer steps alone, per peer")
    parser.add_argument("--steps", type=int, default=8, help="whole DPO steps, per peer (0: skip)")
    parser.add_argument(
        "--skip-statistics", action="store_true", help="no update statistics (slow at 1.5B: 8 seeds of probes)"
    )
    parser.add_argument("--output", default="benchmarks/results/online_merging.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoints", help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    official = load_official(args.official)
    if args.worker:
        atomic_write_text(args.worker_output, json.dumps(run_peak_memory_worker(args, official)))
        return
    config = Qwen2Config(**PRESETS[args.preset], tie_word_embeddings=False, max_position_embeddings=4096)
    with tempfile.TemporaryDirectory() as checkpoints:
        make_checkpoints(config, Path(checkpoints), getattr(torch, args.dtype))
        args.checkpoints = checkpoints
        results = run_all(args, official)
        atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")  # kept if a worker below fails
        if args.device == "cuda":
            # the peers of run_all are gone, but the caching allocator still holds their memory: a worker process
            # (a 1.5B model and its optimizer) would not fit beside it on an 80 GB GPU
            gc.collect()
            torch.cuda.empty_cache()
            peak = {}
            for name in results["peers"]:
                output = Path(checkpoints, f"{name}.json")
                command = [sys.executable, __file__, *sys.argv[1:], "--worker", name, "--checkpoints", checkpoints]
                subprocess.run([*command, "--worker-output", str(output)], check=True)
                peak[name] = json.loads(output.read_text())["peak_memory_bytes"]
            results["peak_memory_bytes"] = peak
    report(results)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
