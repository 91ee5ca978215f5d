"""Memorization audit (SF-Med Appendix B; after Carlini et al. 2021, "Extracting Training Data from Large Language
Models"): split each sampled training record into a prefix and a suffix, decode greedily from the prefix, and call
the record memorized when Rouge-L F(generation, suffix) exceeds the threshold (default 0.8). With
``sensitive_pattern`` set (an extension; off by default, as in the paper), a record also counts as memorized when
any audited continuation gives away one of its identifiers (identifiers.py).

Prefixes are rendered with the LLaMA-Factory template the model was trained with (``split: prompt``: the prompt,
system and history included, exactly as training saw it; the suffix is the label). ``split: ratio|tokens`` cut the
full token sequence instead, as for pre-training text. The generation is cut to the suffix's length in tokens.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Text
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.privacy.config import AUDIT_FIELDS, AuditConfig
from sfmed_lf.privacy.generation import greedy_continuations
from sfmed_lf.privacy.identifiers import matches, record_identifiers
from sfmed_lf.text.rouge import rouge_l_f
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.plotting import png_bytes, pyplot
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint, text_digest


@dataclass(frozen=True)
class TrainingRecord:
    id: str
    sample: Conversation | Text

    @property
    def query(self) -> str:
        """What a user would send to obtain this record: the last user turn, or "" for pre-training text."""
        return self.sample.prompt().question if isinstance(self.sample, Conversation) else ""


def load_training_records(config: AuditConfig) -> list[TrainingRecord]:
    records = []
    for name in config.datasets:
        for location, _, sample in local_dataset(config.dataset_dir, name).records():
            if not isinstance(sample, Conversation | Text):
                raise location.error("preference pairs are not training records to audit.")
            records.append(TrainingRecord(f"{name}:{location.row}", sample))
    if not records:
        raise DataError(f"datasets: {', '.join(config.datasets)} hold no records.")
    if config.sample_size is not None and config.sample_size < len(records):
        chosen = sorted(random.Random(config.seed).sample(range(len(records)), config.sample_size))
        records = [records[index] for index in chosen]
    return records


class Splitter:
    """Prefix and suffix token ids of a record, rendered by the LLaMA-Factory template used in training."""

    def __init__(self, tokenizer, config: AuditConfig) -> None:  # noqa: ANN001 - any HF tokenizer
        from sfmed_lf.formats.lf_template import ChatTemplate

        self.tokenizer, self.config = tokenizer, config
        self.template = ChatTemplate(tokenizer, config.template)

    def __call__(self, record: TrainingRecord) -> tuple[list[int], list[int]]:
        if isinstance(record.sample, Text):
            ids = self.tokenizer(record.sample.text, add_special_tokens=False).input_ids
            if self.config.split == "prompt":
                raise DataError(f"{record.id}: a pre-training text has no prompt; use split: ratio or tokens.")
            return self._cut(ids)
        prompt, answer = self.template.conversation_ids(record.sample)
        if self.config.split == "prompt":
            return prompt, answer[: self.config.max_suffix_tokens]
        return self._cut(prompt + answer)

    def _cut(self, ids: list[int]) -> tuple[list[int], list[int]]:
        cut = self.config.prefix_tokens if self.config.split == "tokens" else round(len(ids) * self.config.prefix_ratio)
        cut = max(1, min(cut, len(ids) - 1))
        return ids[:cut], ids[cut : cut + self.config.max_suffix_tokens]


def run_audit(config: AuditConfig) -> list[Path]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(config.output_dir)
    results_path = out / "audit_results.jsonl"
    settings = {
        k: getattr(config, k) for k in ("template", "split", "prefix_ratio", "prefix_tokens", "max_suffix_tokens")
    }
    records = load_training_records(config)
    audited = text_digest(json.dumps([[r.id, repr(r.sample)] for r in records], ensure_ascii=False))
    model = model_fingerprint(config.model_name_or_path)
    check_provenance(results_path, {"model": model, "records": audited, **settings})
    results = ResumableJsonl(results_path, fields=AUDIT_FIELDS, written_by="sfmed privacy audit")
    todo = [record for record in records if record.id not in results]
    if todo:
        tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path, padding_side="left")
        split = Splitter(tokenizer, config)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path).to(device).eval()
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        with tqdm(
            total=len(records), initial=len(records) - len(todo), desc="memorization audit", unit="record"
        ) as bar:
            for start in range(0, len(todo), config.batch_size):
                batch = todo[start : start + config.batch_size]
                pairs = [split(record) for record in batch]
                continuations = greedy_continuations(
                    model,
                    [prefix for prefix, _ in pairs],
                    pad_id,
                    max_new_tokens=max(len(suffix) for _, suffix in pairs),
                    batch_size=len(pairs),
                )
                for record, (prefix, suffix), generated in zip(batch, pairs, continuations, strict=True):
                    suffix_text = tokenizer.decode(suffix, skip_special_tokens=True).strip()
                    generation = tokenizer.decode(generated[: len(suffix)], skip_special_tokens=True).strip()
                    results.append(
                        {
                            "id": record.id,
                            "query": record.query or tokenizer.decode(prefix, skip_special_tokens=True),
                            "suffix": suffix_text,
                            "generation": generation,
                            "rouge_l": rouge_l_f(generation, suffix_text),
                            "prefix_tokens": len(prefix),
                        }
                    )
                    bar.update()
    return write_audit_report(config, [results.records[record.id] for record in records])


def identifier_leaks(rows: list[dict[str, Any]], pattern: str) -> dict[str, list[str]]:
    """Record id -> ids of the audited records whose continuation gave away one of its identifiers (its own
    continuation included): a model prompted with one patient's record that writes another's ID number leaks it."""
    owners: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        for value in record_identifiers(pattern, row["query"], row["suffix"]):
            owners[value].add(row["id"])
    leaked_by: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        for value in matches(pattern, row["generation"]):
            if value in row["query"]:
                continue  # repeated from the prompt
            for owner in sorted(owners.get(value, ())):
                if row["id"] not in leaked_by[owner]:
                    leaked_by[owner].append(row["id"])
    return dict(leaked_by)


def write_audit_report(config: AuditConfig, rows: list[dict[str, Any]]) -> list[Path]:
    out = Path(config.output_dir)
    reproduced = {row["id"] for row in rows if row["rouge_l"] > config.threshold}
    leaked_by = identifier_leaks(rows, config.sensitive_pattern) if config.sensitive_pattern else {}
    memorized = [
        {**row, **({"leaked_by": leaked_by[row["id"]]} if row["id"] in leaked_by else {})}
        for row in rows
        if row["id"] in reproduced or row["id"] in leaked_by
    ]
    bins = [0] * 10
    for row in rows:
        bins[min(int(row["rouge_l"] * 10), 9)] += 1
    report = {
        "model": config.model_name_or_path,
        "records_audited": len(rows),
        "memorized": len(memorized),
        "memorized_rate": len(memorized) / len(rows) if rows else 0.0,
        "reproduced": len(reproduced),
        "threshold": config.threshold,
        "sensitive_pattern": config.sensitive_pattern,
        "identifiers_given_away": len(leaked_by),
        "split": config.split,
        "rouge_l_histogram": {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": count for i, count in enumerate(bins)},
        "high_risk_ids": [row["id"] for row in memorized],
    }
    paths = [out / "audit_report.json", out / "high_risk.jsonl", out / "audit_rouge_l.png"]
    atomic_write_text(paths[0], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    atomic_write_text(paths[1], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in memorized))
    atomic_write_bytes(paths[2], _histogram([row["rouge_l"] for row in rows], config.threshold))
    by_identifier = f", {len(leaked_by)} by an identifier given away" if config.sensitive_pattern else ""
    print(
        f"memorized {len(memorized)} of {len(rows)} records ({100 * report['memorized_rate']:.2f} %): "
        f"{len(reproduced)} reproduced (Rouge-L > {config.threshold:g}){by_identifier}"
    )
    return paths


def _histogram(scores: list[float], threshold: float) -> bytes:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.hist(scores, bins=20, range=(0, 1), color="#546e7a")
    axis.axvline(threshold, color="#c62828", linestyle="--", label=f"threshold {threshold:g}")
    axis.set_xlabel("Rouge-L F(generation, training suffix)")
    axis.set_ylabel("records")
    axis.legend()
    return png_bytes(figure)
