"""The comparisons of ``sfmed eval``: answers of both models, Rouge-L, judge scores and multiple-choice accuracy;
each reads the previous steps' files from ``output_dir`` and writes its own atomically (answers are appended,
resumably)."""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.eval.config import EvalConfig
from sfmed_lf.eval.generate import answers_file, generate_answers, stale_answers
from sfmed_lf.eval.judge import judge_messages, parse_score
from sfmed_lf.eval.mcq import extract_choice, is_correct
from sfmed_lf.eval.outcomes import count_outcomes, outcome
from sfmed_lf.formats.items import EvalItem, load_items
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.text.rouge import rouge_l_f
from sfmed_lf.utils.io import atomic_write_text, require_file
from sfmed_lf.utils.jsonl import ResumableJsonl

ALL = "All"
# a line of judge/judgments.jsonl (the judge step's resumable cache)
JUDGMENT_FIELDS = {"key": str, "judge_model": str, "judgment": str}


def all_items(config: EvalConfig) -> list[EvalItem]:
    if not config.items:
        raise DataError("items: no evaluation items; name one or more files written by `sfmed eval convert`.")
    items, origin = [], {}
    for path in config.items:
        require_file(path, "items")
        for item in load_items(path):
            if item.id in origin:
                raise DataError(f"items: item id {item.id!r} is in both {origin[item.id]} and {path}.")
            origin[item.id] = path
            items.append(item)
    return items


def configured_labels(config: EvalConfig) -> list[str]:
    labels = [label for label in ("a", "b") if config.model(label).path or config.model(label).endpoint]
    if not labels:
        raise DataError(
            "no model to evaluate: set candidate_model_name_or_path or candidate_url (and the same for baseline_)."
        )
    return labels


def answers(config: EvalConfig, label: str, items: list[EvalItem]) -> dict[str, str]:
    path = config.answers_path(label)
    if not path.exists():
        raise DataError(f"{path} does not exist: run `sfmed eval generate` first.")
    output = answers_file(path, read_only=True)
    stale = stale_answers(output, items)
    if stale:
        raise DataError(f"{path}: the items {stale[:3]} changed since they were answered; use a new output_dir.")
    written = output.records
    missing = [item.id for item in items if item.id not in written]
    if missing:
        raise DataError(
            f"{path}: no answer for {len(missing)} item(s), e.g. {missing[:3]}; re-run `sfmed eval generate`."
        )
    return {item_id: record["response"] for item_id, record in written.items()}


def write_json(path: Path, content: dict[str, Any]) -> Path:
    atomic_write_text(path, json.dumps(content, ensure_ascii=False, indent=2) + "\n")
    return path


def by_dataset(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["dataset"]].append(row)
    return {**dict(sorted(groups.items())), ALL: rows}


class GenerateStep:
    def run(self, config: EvalConfig) -> list[Path]:
        items = all_items(config)
        written = []
        for label in configured_labels(config):
            written.append(generate_answers(config, config.model(label), items).path)
        return written


class RougeStep:
    """Rouge-L F of A and of B against the reference per dialogue item; win/tie/loss per dataset and All."""

    def run(self, config: EvalConfig) -> Path:
        items = [item for item in all_items(config) if item.kind == "dialogue"]
        answers_a, answers_b = answers(config, "a", items), answers(config, "b", items)
        rows = []
        for item in tqdm(items, desc="Rouge-L", unit="item"):
            score_a = rouge_l_f(answers_a[item.id], item.reference, config.rouge_tokenizer)
            score_b = rouge_l_f(answers_b[item.id], item.reference, config.rouge_tokenizer)
            rows.append(
                {
                    "id": item.id,
                    "dataset": item.dataset,
                    "rouge_l_a": score_a,
                    "rouge_l_b": score_b,
                    "outcome": outcome(score_a, score_b, config.tie_margin),
                }
            )
        summary = {
            name: {
                **count_outcomes([row["outcome"] for row in group]).as_dict(),
                "mean_rouge_l_a": sum(r["rouge_l_a"] for r in group) / max(len(group), 1),
                "mean_rouge_l_b": sum(r["rouge_l_b"] for r in group) / max(len(group), 1),
            }
            for name, group in by_dataset(rows).items()
        }
        return write_json(
            Path(config.output_dir) / "rouge.json",
            {
                "model_a": config.candidate_name,
                "model_b": config.baseline_name,
                "tokenizer": config.rouge_tokenizer,
                "tie_margin": config.tie_margin,
                "summary": summary,
                "items": rows,
            },
        )


class JudgeStep:
    """Each dialogue answer scored alone by the judge endpoint; judgments cached by (judge model, prompt)."""

    def run(self, config: EvalConfig) -> Path:
        if not config.judge_url:
            raise DataError("judge_url is not set: the judge step needs an OpenAI-compatible endpoint.")
        items = [item for item in all_items(config) if item.kind == "dialogue"]
        responses = {label: answers(config, label, items) for label in ("a", "b")}
        cache = ResumableJsonl(
            Path(config.output_dir) / "judge" / "judgments.jsonl",
            key="key",
            fields=JUDGMENT_FIELDS,
            written_by="sfmed eval judge",
        )
        endpoint = config.endpoint(config.judge_url, config.judge_model)
        requests = []
        for item in items:
            for label in ("a", "b"):
                messages = judge_messages(item.prompt, item.reference, responses[label][item.id])
                key = hashlib.sha256(
                    json.dumps([config.judge_model, messages], ensure_ascii=False).encode()
                ).hexdigest()
                requests.append((item, label, key, messages))
        todo = list({key: (key, messages) for _, _, key, messages in requests if key not in cache}.values())

        def ask(request: tuple[str, list[dict[str, str]]]) -> tuple[str, str]:
            key, messages = request
            return key, endpoint.complete(messages, temperature=0.0, max_tokens=config.judge_max_new_tokens)

        try:
            with tqdm(total=len(todo), desc="judge", unit="answer") as progress:
                for key, judgment in map_concurrently(ask, todo, config.concurrency):
                    cache.append({"key": key, "judge_model": config.judge_model, "judgment": judgment})
                    progress.update()
        finally:
            endpoint.close()

        scores: dict[tuple[str, str], float | None] = {}
        unparseable = []
        for item, label, key, _ in requests:
            score, rule = parse_score(cache.records[key]["judgment"])
            scores[item.id, label] = score
            if score is None:
                unparseable.append(
                    {"id": item.id, "model": label, "why": rule, "judgment": cache.records[key]["judgment"][:500]}
                )
        rows = []
        for item in items:
            score_a, score_b = scores[item.id, "a"], scores[item.id, "b"]
            judged = score_a is not None and score_b is not None
            rows.append(
                {
                    "id": item.id,
                    "dataset": item.dataset,
                    "score_a": score_a,
                    "score_b": score_b,
                    "outcome": outcome(score_a, score_b, config.tie_margin) if judged else None,
                }
            )
        summary = {}
        for name, group in by_dataset(rows).items():
            judged = [row for row in group if row["outcome"] is not None]
            summary[name] = {
                **count_outcomes([row["outcome"] for row in judged]).as_dict(),
                "unjudged": len(group) - len(judged),
                "mean_score_a": sum(r["score_a"] for r in judged) / len(judged) if judged else None,
                "mean_score_b": sum(r["score_b"] for r in judged) / len(judged) if judged else None,
            }
        return write_json(
            Path(config.output_dir) / "judge.json",
            {
                "model_a": config.candidate_name,
                "model_b": config.baseline_name,
                "judge_model": config.judge_model,
                "summary": summary,
                "unparseable": unparseable,
                "items": rows,
            },
        )


class McqStep:
    """Option extraction and accuracy per benchmark and for All, for every model with answers."""

    def run(self, config: EvalConfig) -> Path:
        items = [item for item in all_items(config) if item.exam is not None]
        result: dict[str, Any] = {"models": {}}
        for label in configured_labels(config):
            responses = answers(config, label, items)
            rows = []
            for item in items:
                exam = item.exam
                assert exam is not None
                extraction = extract_choice(responses[item.id], dict(exam.options), exam.multi_answer)
                rows.append(
                    {
                        "id": item.id,
                        "dataset": item.dataset,
                        "gold": exam.answer,
                        "extracted": extraction.letters,
                        "rule": extraction.rule,
                        "correct": is_correct(extraction, exam.answer, exam.multi_answer),
                    }
                )
            per_benchmark = {
                name: {
                    "n": len(group),
                    "correct": sum(r["correct"] for r in group),
                    "accuracy": sum(r["correct"] for r in group) / max(len(group), 1),
                    "unextracted": sum(r["extracted"] is None for r in group),
                }
                for name, group in by_dataset(rows).items()
            }
            result["models"][label] = {
                "name": config.model(label).name,
                "accuracy": per_benchmark,
                "unextracted": [
                    {"id": r["id"], "response": responses[r["id"]][:300]} for r in rows if r["extracted"] is None
                ],
                "items": rows,
            }
        return write_json(Path(config.output_dir) / "mcq.json", result)
