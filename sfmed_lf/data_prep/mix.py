"""``sfmed data mix``: token counts of the continued pre-training corpora and the LLaMA-Factory interleaving that
gives the medical : general token ratio of SF-Med §3.1 (about 1.3B : 1.4B).

LF's ``interleave_*`` strategies draw each next record from source i with probability p_i, so the expected token
share of source i is p_i m_i / sum_j p_j m_j, with m_i its mean tokens per record. Keeping each group's sources in
their natural proportion (by tokens T_i, group total T_g) at group share r_g gives

    p_i ∝ r_g · T_i / (T_g · m_i) = r_g · n_i / T_g        (n_i: records of source i).

With ``interleave_under`` the run stops when the first source runs out, after D = min_i n_i / p_i draws; with
``interleave_over`` it goes on until every source has been seen once, D = max_i n_i / p_i, repeating the others.
The report gives each source's expected tokens and passes (D p_i / n_i) under the chosen strategy.
Tokens are counted with the model's tokenizer as LF's pre-training preprocessing sees them: text + EOS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sfmed_lf.config_files import read_yaml
from sfmed_lf.data_prep.config import MixConfig
from sfmed_lf.errors import DataError
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.utils.io import atomic_write_text

DATASET_TYPES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


def dataset_files(dataset_dir: str, name: str, option: str) -> tuple[str, list[str], str]:
    """(loader type, files, text column) of a local pre-training entry of ``dataset_dir``/dataset_info.json."""
    dataset = local_dataset(dataset_dir, name, option)
    if dataset.entry.kind != "text":
        raise DataError(
            f"{option}: {dataset.info_path}: {name} is {dataset.entry.kind} data; a pre-training dataset is "
            "alpaca-formatted with a text column (columns: {prompt: text})."
        )
    files = [str(path) for path in dataset.files]
    kinds = {DATASET_TYPES.get(Path(f).suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise DataError(f"{option}: {name}: files must share one of {', '.join(DATASET_TYPES)}; got {files[:3]}.")
    return kinds.pop(), files, dataset.entry.columns["prompt"]


def count_tokens(config: MixConfig, name: str, group: str, tokenizer: Any) -> dict[str, Any]:
    from datasets import load_dataset

    kind, files, column = dataset_files(config.dataset_dir, name, group)
    try:
        dataset = load_dataset(kind, data_files=files, split="train")
    except Exception as error:  # Arrow's schema errors (a column of mixed types) carry no row: check the file
        raise DataError(
            f"{group}: {name}: {files[0]} cannot be loaded ({type(error).__name__}: {str(error)[:200]}); "
            f"`sfmed data check {name}` locates the rows."
        ) from None
    if column not in dataset.column_names:
        raise DataError(f"{name}: no column {column!r} in {files[0]} (columns: {dataset.column_names}).")
    eos = tokenizer.eos_token or ""

    def measure(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        texts = batch[column]
        for index, text in zip(indices, texts, strict=True):
            if not isinstance(text, str) or not text.strip():  # never coerced: a number is not text
                raise DataError(f"{group}: {name}: record {index + 1} of {files}: field {column!r} is not text.")
        tokens = tokenizer([text + eos for text in texts], add_special_tokens=False)["input_ids"]
        return {"tokens": [len(ids) for ids in tokens], "characters": [len(text) for text in texts]}

    counted = dataset.map(
        measure,
        batched=True,
        with_indices=True,
        batch_size=config.batch_size,
        num_proc=config.num_proc if config.num_proc > 1 else None,
        remove_columns=dataset.column_names,
        desc=f"count tokens {name}",
    )
    records = len(counted)
    if not records:
        raise DataError(f"{name}: {files[0]} holds no records.")
    tokens = int(sum(counted["tokens"]))
    return {"records": records, "characters": int(sum(counted["characters"])), "tokens": tokens}


def interleave_plan(sources: list[dict[str, Any]], shares: dict[str, float], strategy: str) -> None:
    """Fill each source's probability, expected tokens and passes (see the module docstring)."""
    total_share = sum(shares.values())
    group_tokens = {group: sum(s["tokens"] for s in sources if s["group"] == group) for group in shares}
    weights = [shares[s["group"]] / total_share * s["records"] / group_tokens[s["group"]] for s in sources]
    for source, weight in zip(sources, weights, strict=True):
        source["probability"] = weight / sum(weights)
    draws_to_exhaust = [s["records"] / s["probability"] for s in sources]
    draws = min(draws_to_exhaust) if strategy == "interleave_under" else max(draws_to_exhaust)
    for source in sources:
        expected_records = draws * source["probability"]
        source["expected_passes"] = expected_records / source["records"]
        source["expected_tokens"] = expected_records * source["tokens"] / source["records"]


def run_mix(config: MixConfig) -> list[Path]:
    from transformers import AutoTokenizer

    for group, names in (("medical", config.medical), ("general", config.general)):
        for name in names:  # every dataset is checked before the tokenizer is loaded
            dataset_files(config.dataset_dir, name, group)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    sources = []
    for group, names in (("medical", config.medical), ("general", config.general)):
        for name in names:
            sources.append({"dataset": name, "group": group, **count_tokens(config, name, group, tokenizer)})
    shares = {"medical": config.medical_share, "general": config.general_share}
    interleave_plan(sources, shares, config.mix_strategy)
    expected_total = sum(s["expected_tokens"] for s in sources)
    groups = {
        group: {
            "tokens": sum(s["tokens"] for s in sources if s["group"] == group),
            "expected_tokens": sum(s["expected_tokens"] for s in sources if s["group"] == group),
            "target_share": share / sum(shares.values()),
        }
        for group, share in shares.items()
    }
    for group in groups.values():
        group["expected_share"] = group["expected_tokens"] / expected_total
    lf_options = {
        "dataset": ",".join(s["dataset"] for s in sources),
        "dataset_dir": config.dataset_dir,
        "mix_strategy": config.mix_strategy,
        "interleave_probs": ",".join(repr(s["probability"]) for s in sources),
    }
    report = {
        "tokenizer": config.model_name_or_path,
        "mix_strategy": config.mix_strategy,
        "sources": sources,
        "groups": groups,
        "llamafactory_options": lf_options,
    }
    out = Path(config.output_dir)
    written = [out / "mix_report.json", out / "mix_report.md"]
    atomic_write_text(written[0], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(written[1], _markdown(report))
    if config.train_yaml:
        train = read_yaml(config.train_yaml)
        if train.get("stage", "pt") != "pt":
            raise DataError(f"{config.train_yaml}: stage must be pt for the pre-training mix.")
        written.append(out / "pt_mix.yaml")
        header = f"# {config.train_yaml} with the mix of {written[0]} (sfmed data mix)\n"
        body = yaml.safe_dump({**train, **lf_options}, allow_unicode=True, sort_keys=False)
        atomic_write_text(written[2], header + body)
    return written


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Continued pre-training mix ({report['mix_strategy']})",
        "",
        f"Tokens counted with `{report['tokenizer']}` (text + EOS, as LLaMA-Factory's pt preprocessing).",
        "",
        "| dataset | group | records | tokens | tokens/record | interleave prob | expected tokens | passes |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in report["sources"]:
        lines.append(
            f"| {s['dataset']} | {s['group']} | {s['records']:,} | {s['tokens']:,} | {s['tokens'] / s['records']:.1f} "
            f"| {s['probability']:.4f} | {s['expected_tokens']:,.0f} | {s['expected_passes']:.2f} |"
        )
    lines += ["", "| group | tokens | target share | expected share |", "|---|---:|---:|---:|"]
    for group, g in report["groups"].items():
        lines.append(f"| {group} | {g['tokens']:,} | {g['target_share']:.3f} | {g['expected_share']:.3f} |")
    options = report["llamafactory_options"]
    lines += ["", "LLaMA-Factory options:", "", "```yaml", *(f"{k}: {v}" for k, v in options.items()), "```", ""]
    return "\n".join(lines)
