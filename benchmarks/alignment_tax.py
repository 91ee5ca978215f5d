"""The alignment-tax experiment of online merging (Lu et al. 2024, "Online Merging Optimizers for Boosting Rewards
and Mitigating Tax in Alignment", arXiv:2405.17931) on the generated world, with the tiny model on a CPU.

The paper's claim: DPO with an online merging optimizer (OnDARE, OnTIES) reaches a higher alignment reward for a
lower alignment tax than plain DPO, and than merging the DPO model with the SFT model offline (DARE, TIES).

From one SFT model (the demo's: world -> tiny model -> token mix -> CPT -> SFT; trained here unless --models names a
directory holding world/, pt/ and sft/), for each seed:

* DPO on the world's preference pairs (each preference prompt's correct answer over its fluent wrong one): plain
  (AdamW), with OnDARE and with OnTIES at the (p, alpha) settings of --settings, everything else as in
  examples/yaml/tiny/dpo.yaml;
* offline merges of the plain DPO model with the SFT model, task vectors against the CPT model (the model SFT
  started from): DARE (drop with keep probability p, rescale 1/p; Yu et al. 2023) and TIES (keep the top-p by
  magnitude, elect signs, disjoint mean; Yadav et al. 2023), weights 1/2 each.

Reward: the preferred-answer rate on the world's held-out pairs (conditions no preference data covers) and DPO's
reward accuracy against the SFT model (``sfmed world measure``). Tax: held-out multiple-choice accuracy
(``sfmed eval generate`` + ``mcq``) and general-domain loss (``sfmed world measure``), each against the SFT model.
Means and standard deviations over seeds; the merging settings in force (the DPO YAML's ``sfmed_merge_*`` and the
defaults of sfmed_lf/merging/config.py) are written into the results.

    python benchmarks/alignment_tax.py                      # 3 seeds; trains CPT and SFT first (~15 min more)
    python benchmarks/alignment_tax.py --models saves/tiny  # reuse the demo's world, CPT and SFT models

Each seed took about 9.5 min on the 2-core machine (2026-12-07, --mcq-items 100).

Results: benchmarks/results/alignment_tax.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfmed_lf.formats.lf_rows import dataset_info_entry  # noqa: E402
from sfmed_lf.hparams import online_merging_off  # noqa: E402
from sfmed_lf.merging.config import OnlineMergingConfig  # noqa: E402
from sfmed_lf.utils.plotting import png_bytes, pyplot  # noqa: E402

BIN = Path(sys.executable).parent
DPO_YAML = "examples/yaml/tiny/dpo.yaml"  # every DPO run's settings, relative to ROOT


def run(*args: str) -> None:
    command = [str(BIN / args[0]), *args[1:]] if (BIN / args[0]).exists() else list(args)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def prepare_models(work: Path) -> Path:
    """world -> tiny model -> mix -> CPT -> SFT, exactly as the demo trains them (without diversification)."""
    base = work / "base"
    if (base / "sft" / "model.safetensors").exists():
        return base
    world, model = base / "world", base / "model"
    run("sfmed", "world", "generate", "examples/yaml/tiny/world.yaml", f"output_dir={world}")
    run("sfmed", "tiny-model", "examples/yaml/tiny/tiny_model.yaml", f"output_dir={model}", f"corpus=[{world}]")
    mix = base / "mix"
    run(
        "sfmed",
        "data",
        "mix",
        "examples/yaml/tiny/mix.yaml",
        f"tokenizer={model}",
        f"dataset_dir={world}",
        f"output_dir={mix}",
    )
    run(
        "llamafactory-cli",
        "train",
        str(mix / "pt_mix.yaml"),
        f"model_name_or_path={model}",
        f"output_dir={base / 'pt'}",
    )
    run(
        "llamafactory-cli",
        "train",
        "examples/yaml/tiny/sft.yaml",
        f"model_name_or_path={base / 'pt'}",
        f"dataset_dir={world}",
        f"output_dir={base / 'sft'}",
    )
    return base


def preference_pairs(world: Path, out: Path) -> None:
    """The world's preference prompts, each with its correct answer chosen over its fluent wrong one."""
    rows = []
    for row in json.loads((world / "pref_prompts.json").read_text(encoding="utf-8")):
        rejected = next(c for c in row["candidates"] if c != row["output"])
        rows.append(
            {key: row[key] for key in ("instruction", "input", "history", "system")}
            | {"chosen": row["output"], "rejected": rejected}
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    info = {"world_dpo_pairs": dataset_info_entry("pairs.json", "ranking")}
    (out / "dataset_info.json").write_text(json.dumps(info), encoding="utf-8")


def dpo(base: Path, pairs: Path, output: Path, seed: int, *merging: str) -> None:
    if (output / "model.safetensors").exists():
        return
    run(
        "llamafactory-cli",
        "train",
        DPO_YAML,
        f"model_name_or_path={base / 'sft'}",
        f"sfmed_merge_base_model={base / 'pt'}",
        f"dataset_dir={pairs}",
        "dataset=world_dpo_pairs",
        f"output_dir={output}",
        f"seed={seed}",
        "plot_loss=false",
        *merging,
    )


def offline_merge(base: Path, dpo_dir: Path, output: Path, method: str, keep: float, seed: int) -> None:
    """theta_pt + 1/2 (tau_sft' + tau_dpo') with DARE, or theta_pt + TIES(tau_sft, tau_dpo), tau against CPT."""
    if (output / "model.safetensors").exists():
        return
    pt, sft, aligned = (load_file(str(d / "model.safetensors")) for d in (base / "pt", base / "sft", dpo_dir))
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for name, start in pt.items():
        taus = [sft[name].float() - start.float(), aligned[name].float() - start.float()]
        if method == "dare":
            kept = [tau * (torch.rand(tau.shape, generator=generator) < keep) / keep for tau in taus]
            delta = 0.5 * (kept[0] + kept[1])
        else:
            trimmed = []
            for tau in taus:
                k = max(1, int(keep * tau.numel()))
                threshold = tau.abs().flatten().kthvalue(tau.numel() - k + 1).values
                trimmed.append(tau * (tau.abs() >= threshold))
            stack = torch.stack(trimmed)
            sign = torch.sign(stack.sum(0))
            agree = (torch.sign(stack) == sign) & (stack != 0)
            delta = (stack * agree).sum(0) / agree.sum(0).clamp(min=1)
        merged[name] = (start.float() + delta).to(start.dtype)
    shutil.copytree(dpo_dir, output, ignore=shutil.ignore_patterns("*.safetensors", "checkpoint-*"))
    save_file(merged, str(output / "model.safetensors"), metadata={"format": "pt"})


def evaluate(base: Path, models: dict[str, Path], work: Path, max_items: int) -> dict[str, Any]:
    world = base / "world"
    items = [json.loads(line) for line in (world / "eval_mcq.jsonl").read_text(encoding="utf-8").splitlines()]
    subset = work / "eval_mcq.jsonl"
    subset.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items[:max_items]), encoding="utf-8")
    results: dict[str, Any] = {}
    for name, path in models.items():
        out = work / "eval" / name
        if not (out / "mcq.json").exists():
            overrides = [
                f"items=[{subset}]",
                f"candidate_name={name}",
                f"candidate_model_name_or_path={path}",
                f"output_dir={out}",
                "max_new_tokens=48",
                "batch_size=32",
            ]
            run(
                "sfmed",
                "eval",
                "generate",
                "examples/yaml/tiny/eval.yaml",
                *overrides,
                "baseline_model_name_or_path=null",
            )
            run("sfmed", "eval", "mcq", "examples/yaml/tiny/eval.yaml", *overrides, "baseline_model_name_or_path=null")
        results[name] = {
            "mcq": json.loads((out / "mcq.json").read_text())["models"]["a"]["accuracy"]["All"]["accuracy"]
        }
    config = {
        "output_dir": str(work / "measure"),
        "models": {n: str(p) for n, p in models.items()},
        "reference": "SFT",
        "dataset_dir": str(world),
        "pairs_dataset": "world_pref_heldout",
        "general_dataset": "world_general_heldout",
    }
    (work / "measure.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    run("sfmed", "world", "measure", str(work / "measure.yaml"))
    measured = json.loads((work / "measure" / "measure.json").read_text())["models"]
    for name in models:
        results[name] |= {
            "preferred": measured[name]["preferred_answer_rate"]["All"]["rate"],
            "reward_accuracy": measured[name]["reward_accuracy"]["All"]["rate"],
            "general_loss": measured[name]["general_loss"]["loss"],
        }
    return results


def summarise(per_seed: list[dict[str, Any]], sft: dict[str, float]) -> dict[str, dict[str, list[float]]]:
    methods = [name for name in per_seed[0] if name != "SFT"]
    table: dict[str, dict[str, list[float]]] = {}
    for method in methods:
        values = [seed[method] for seed in per_seed]
        table[method] = {
            "preferred": [v["preferred"] for v in values],
            "reward_accuracy": [v["reward_accuracy"] for v in values],
            "mcq_change": [v["mcq"] - sft["mcq"] for v in values],
            "general_loss_change": [v["general_loss"] - sft["general_loss"] for v in values],
        }
    return table


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return (
        f"{statistics.mean(values):+.3f} ± {spread:.3f}"
        if min(values) < 0
        else f"{statistics.mean(values):.3f} ± {spread:.3f}"
    )


def plot(table: dict[str, dict[str, list[float]]], sft: dict[str, float]) -> bytes:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, tax, label in (
        (axes[0], "mcq_change", "held-out multiple-choice accuracy − SFT's (higher: less tax)"),
        (axes[1], "general_loss_change", "general-domain loss − SFT's (lower: less tax)"),
    ):
        for method, values in table.items():
            x, y = values[tax], values["preferred"]
            axis.errorbar(
                statistics.mean(x),
                statistics.mean(y),
                xerr=statistics.pstdev(x),
                yerr=statistics.pstdev(y),
                fmt="o",
                capsize=3,
                label=method,
            )
            axis.annotate(
                method, (statistics.mean(x), statistics.mean(y)), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        axis.axhline(sft["preferred"], color="grey", linestyle=":", linewidth=1)
        axis.annotate("SFT", (axis.get_xlim()[0], sft["preferred"]), fontsize=7, color="grey", va="bottom")
        axis.axvline(0, color="grey", linestyle=":", linewidth=1)
        axis.set_xlabel(label, fontsize=8)
        axis.set_ylabel("reward: preferred-answer rate on held-out pairs", fontsize=8)
    axes[0].set_title("reward vs tax (knowledge): mean ± std over seeds", fontsize=9)
    axes[1].set_title("reward vs tax (general language): mean ± std over seeds", fontsize=9)
    return png_bytes(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=["0.3:0.01", "0.1:0.001"],
        help="online merging (keep_prob:alpha) settings, each run with OnDARE and OnTIES",
    )
    parser.add_argument("--offline-keep", type=float, default=0.3, help="keep probability / top-p of DARE and TIES")
    parser.add_argument("--models", help="a directory with world/, pt/ and sft/ (e.g. saves/tiny) to start from")
    parser.add_argument("--mcq-items", type=int, default=160, help="held-out exam items evaluated per model")
    parser.add_argument("--work", default="saves/bench/alignment_tax")
    arguments = parser.parse_args()

    started = time.perf_counter()
    work = ROOT / arguments.work
    base = Path(arguments.models).resolve() if arguments.models else prepare_models(work)
    prepared = time.perf_counter() - started
    preference_pairs(base / "world", work / "pairs")
    per_seed = []
    sft_result: dict[str, float] = {}
    for seed in arguments.seeds:
        models = {"SFT": base / "sft"}
        plain = work / f"seed{seed}" / "dpo"
        dpo(base, work / "pairs", plain, seed, *online_merging_off(), "optim=adamw_torch")
        models["DPO"] = plain
        for setting in arguments.settings:
            keep, alpha = setting.split(":")
            for method in ("ondare", "onties"):
                name = f"DPO+{'OnDARE' if method == 'ondare' else 'OnTIES'} p={keep} α={alpha}"
                output = work / f"seed{seed}" / f"{method}_{keep}_{alpha}"
                dpo(
                    base,
                    work / "pairs",
                    output,
                    seed,
                    f"sfmed_merge_method={method}",
                    f"sfmed_merge_keep_prob={keep}",
                    f"sfmed_merge_alpha={alpha}",
                    f"sfmed_merge_seed={seed}",
                )
                models[name] = output
        for method in ("dare", "ties"):
            output = work / f"seed{seed}" / f"offline_{method}"
            offline_merge(base, plain, output, method, arguments.offline_keep, seed)
            models[f"DPO, then offline {method.upper()} p={arguments.offline_keep}"] = output
        results = evaluate(base, models, work / f"seed{seed}", arguments.mcq_items)
        sft_result = results["SFT"]
        per_seed.append(results)
        print(f"seed {seed}: {json.dumps(results, ensure_ascii=False)}", flush=True)
    table = summarise(per_seed, sft_result)
    elapsed = time.perf_counter() - started
    # the merging settings in force: the DPO YAML's (overridden per run by --settings) and the config's own defaults
    # (OnlineMergingConfig needs method, p and alpha, so it cannot be built bare)
    dpo_yaml = yaml.safe_load((ROOT / DPO_YAML).read_text(encoding="utf-8"))
    defaults = {
        "dpo_yaml": {key: value for key, value in dpo_yaml.items() if key.startswith("sfmed_merge_")},
        "config": {
            field.name: str(field.default)
            for field in dataclasses.fields(OnlineMergingConfig)
            if field.default is not dataclasses.MISSING
        },
    }
    result = {
        "seeds": arguments.seeds,
        "settings": arguments.settings,
        "offline_keep": arguments.offline_keep,
        "sft": sft_result,
        "methods": table,
        "per_seed": per_seed,
        "merging_defaults": defaults,
        "seconds": {"prepare": round(prepared), "total": round(elapsed)},
    }
    results_dir = ROOT / "benchmarks" / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "alignment_tax.json").write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    (results_dir / "alignment_tax.png").write_bytes(plot(table, sft_result))
    lines = [
        f"# Alignment tax on the generated world ({len(arguments.seeds)} seeds, tiny model, CPU)",
        "",
        f"SFT: preferred-answer rate {sft_result['preferred']:.3f}, held-out MCQ accuracy {sft_result['mcq']:.3f}, "
        f"general-domain loss {sft_result['general_loss']:.3f}.",
        "",
        "| method | preferred-answer rate | DPO reward accuracy | MCQ accuracy − SFT | general loss − SFT |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {m} | {mean_std(v['preferred'])} | {mean_std(v['reward_accuracy'])} | {mean_std(v['mcq_change'])} | "
            f"{mean_std(v['general_loss_change'])} |"
            for m, v in table.items()
        ),
        "",
        f"Wall time: {elapsed / 60:.1f} min ({prepared / 60:.1f} min preparing the SFT model).",
    ]
    (results_dir / "alignment_tax.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
