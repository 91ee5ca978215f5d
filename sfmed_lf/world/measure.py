"""``sfmed world measure``: what a preference stage and its tax do to local models, by likelihood.

* **Preferred-answer rate** on held-out pairs (``world_pref_heldout``: a prompt, a correct answer and a fluent wrong
  one): the share of pairs whose correct answer the model gives the higher log-likelihood — summed over the
  answer's tokens as supervised training encodes them (LLaMA-Factory's template, end of turn included), after the
  pair's prompt and system prompt. Per error kind and overall. It needs no judge and no sampling, so it moves
  smoothly with training. With ``reference`` set, also DPO's **reward accuracy**: the share of pairs where the
  model's log-likelihood ratio to the reference model is larger for the correct answer (Rafailov et al. 2023, Eq. 5).
* **General-domain loss**: mean negative log-likelihood per token of held-out general-domain sentences (a phrasing
  pre-training never used), the "forgetting" side of an alignment tax.
* **Exam accuracy by likelihood** (``exam_items``: the evaluated exam items, ``sfmed eval`` schema): for each
  single-answer item, the statement the model finds most likely, after the exam prompt, among one per option —
  the item's reference statement of the fact with that option's text in place of the gold one (the closing letter
  left out: a model that never saw the answer form would only add noise with it). It asks whether the model holds
  the fact, not whether it writes a well-formed answer (the generative ``sfmed eval mcq`` asks that), so it also
  measures the CPT model.
  Per dataset of the items, against chance (1 / number of options); items whose reference does not state the gold
  option's text once are counted as skipped.
* **Answer letter by likelihood** (the same items): after the item's reference statement of the gold fact, the
  letter the model finds most likely in "答案：<letter>". It measures multiple-choice symbol binding — giving the
  letter of the option one has just stated — apart from knowing the fact (Robinson et al. 2023, "Leveraging Large
  Language Models for Multiple Choice Question Answering": a skill small models lack). A generative exam answer is
  right only when both hold.

Output: ``measure.json`` in ``output_dir`` (one entry per model, written atomically once all are measured).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Prompt, Text
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.formats.exam import ExamQuestion
from sfmed_lf.formats.items import EvalItem, load_items
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.steps import StepConfig, option
from sfmed_lf.templates import exam_prompt
from sfmed_lf.utils.io import atomic_write_text
from sfmed_lf.world.phrasing import EXAM_ANSWER_MARK


@dataclass
class MeasureConfig(StepConfig):
    output_dir: str = option(help="where measure.json is written")
    models: dict[str, str] = option(default_factory=dict, help="name -> local model directory")
    template: str = option("sfmed", help="LLaMA-Factory template the models were trained with")
    dataset_dir: str = option(".", help="where pairs_dataset and general_dataset are registered")
    pairs_dataset: str | None = option(None, help="ranking dataset of held-out pairs")
    general_dataset: str | None = option(None, help="pre-training dataset of held-out text")
    reference: str | None = option(None, help="models' name to measure reward accuracy against")
    exam_items: str | None = option(None, help="evaluation items (JSONL, sfmed eval schema) with exam questions")
    batch_size: int = option(16, help="sequences per forward pass")

    def __post_init__(self) -> None:
        if not isinstance(self.models, dict) or not self.models:
            raise ValueError("models: give a mapping of name -> model directory.")
        if not self.pairs_dataset and not self.general_dataset and not self.exam_items:
            raise ValueError("nothing to measure: give pairs_dataset, general_dataset and/or exam_items.")
        if self.reference is not None and self.reference not in self.models:
            raise ValueError(f"reference: {self.reference!r} is not one of the models.")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1.")


def read_samples(dataset_dir: str, name: str, kind: type) -> list[Any]:
    samples = [sample for _, _, sample in local_dataset(dataset_dir, name).records()]
    wrong = [s for s in samples if not isinstance(s, kind)]
    if wrong or not samples:
        raise DataError(f"{name}: expected {kind.__name__} rows in {dataset_dir}, found {len(samples)} rows.")
    return samples


class LikelihoodModel:
    """A causal LM scoring answers after prompts, both encoded by LLaMA-Factory's template as training encodes."""

    def __init__(self, path: str, template: str, batch_size: int) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sfmed_lf.formats.lf_template import ChatTemplate

        self.torch, self.batch_size = torch, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.template = ChatTemplate(self.tokenizer, template)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device).eval()

    def log_likelihoods(self, sequences: list[tuple[list[int], int]]) -> list[tuple[float, int]]:
        """(sum of log p over the tokens from ``start`` on, their count) for each (ids, start)."""
        torch = self.torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results = []
        for begin in range(0, len(sequences), self.batch_size):
            batch = sequences[begin : begin + self.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=self.device)
            with torch.inference_mode():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            log_probs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]
            for row, (ids, start) in enumerate(batch):
                results.append((float(log_probs[row, start - 1 : len(ids) - 1].sum()), len(ids) - start))
        return results

    def answer_scores(self, pairs: list[PreferencePair]) -> list[tuple[float, float]]:
        """(log p(chosen | prompt), log p(rejected | prompt)) per pair."""
        sequences = []
        for pair in pairs:
            for answer in (pair.chosen, pair.rejected):
                prompt_ids, answer_ids = self.template.conversation_ids(pair.prompt.answered(answer))
                sequences.append((prompt_ids + answer_ids, len(prompt_ids)))
        scores = self.log_likelihoods(sequences)
        return [(scores[2 * i][0], scores[2 * i + 1][0]) for i in range(len(pairs))]

    def text_loss(self, texts: list[str]) -> dict[str, float]:
        """Mean NLL per token of texts as pre-training sees them (each followed by EOS; the first token given)."""
        eos = self.tokenizer.eos_token_id
        sequences = [(self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos], 1) for text in texts]
        scores = self.log_likelihoods(sequences)
        tokens = sum(count for _, count in scores)
        return {"texts": len(texts), "tokens": tokens, "loss": -sum(total for total, _ in scores) / tokens}


def exam_candidates(item: EvalItem) -> list[str] | None:
    """One statement per option (in option order) for a single-answer item: its reference's statement of the fact
    (without the closing "答案：<letter>") with the option's text in place of the gold one; None where that cannot be
    built (multi-answer, a reference not closing with "答案：<gold letter>", the gold text not stated exactly once)."""
    exam = item.exam
    if exam is None or exam.multi_answer or len(exam.answer) != 1:
        return None
    gold_text, reference, closing = exam.options[exam.answer], exam.explanation.strip(), EXAM_ANSWER_MARK + exam.answer
    stated = reference.removesuffix(closing).strip()
    if not reference.endswith(closing) or stated.count(gold_text) != 1:
        return None
    return [stated.replace(gold_text, text) for text in exam.options.values()]


def letter_candidates(item: EvalItem) -> list[str] | None:
    """One answer per option (in option order) for a single-answer item: the reference's statement of the gold fact,
    then "答案：" and that option's letter; None where ``exam_candidates`` gives none."""
    candidates = exam_candidates(item)
    if candidates is None or item.exam is None:
        return None
    stated = candidates[list(item.exam.options).index(item.exam.answer)]
    return [f"{stated}{EXAM_ANSWER_MARK}{letter}" for letter in item.exam.options]


def exam_accuracy(
    model: LikelihoodModel, items: list[EvalItem], candidates_of: Callable[[EvalItem], list[str] | None]
) -> dict[str, dict[str, float]]:
    """Per dataset of the items: n, accuracy of the most likely of the item's candidate answers (one per option, in
    option order; summed log-likelihood), chance, skipped items."""
    scored: list[tuple[str, ExamQuestion, int, int]] = []  # dataset, question, first candidate, candidates
    sequences: list[tuple[list[int], int]] = []
    skipped: dict[str, int] = defaultdict(int)
    for item in items:
        candidates = candidates_of(item)
        if candidates is None or item.exam is None:
            skipped[item.dataset] += 1
            continue
        prompt = Prompt(exam_prompt(item.prompt.question, dict(item.exam.options), multi_answer=False))
        scored.append((item.dataset, item.exam, len(sequences), len(candidates)))
        for candidate in candidates:
            prompt_ids, answer_ids = model.template.conversation_ids(prompt.answered(candidate))
            sequences.append((prompt_ids + answer_ids, len(prompt_ids)))
    scores = model.log_likelihoods(sequences)
    outcomes: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for dataset, exam, start, count in scored:
        best = max(range(count), key=lambda i: scores[start + i][0])
        outcomes[dataset].append((list(exam.options)[best] == exam.answer, 1 / count))
    result = {}
    for dataset in sorted(outcomes.keys() | skipped.keys()):
        done = outcomes.get(dataset, [])
        result[dataset] = {
            "n": len(done),
            "accuracy": sum(correct for correct, _ in done) / len(done) if done else None,
            "chance": sum(chance for _, chance in done) / len(done) if done else None,
            "skipped": skipped.get(dataset, 0),
        }
    return result


def rates(pairs: list[PreferencePair], preferred: list[bool]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[bool]] = defaultdict(list)
    for pair, won in zip(pairs, preferred, strict=True):
        by_kind[pair.error_kind or "pairs"].append(won)
    result = {kind: {"n": len(v), "rate": sum(v) / len(v)} for kind, v in sorted(by_kind.items())}
    return {**result, "All": {"n": len(preferred), "rate": sum(preferred) / len(preferred)}}


def run_measure(config: MeasureConfig) -> list[Path]:
    pairs = read_samples(config.dataset_dir, config.pairs_dataset, PreferencePair) if config.pairs_dataset else None
    texts = None
    if config.general_dataset:
        texts = [sample.text for sample in read_samples(config.dataset_dir, config.general_dataset, Text)]
    exam = load_items(config.exam_items) if config.exam_items else None
    if exam is not None and not any(item.exam is not None for item in exam):
        raise DataError(f"exam_items: {config.exam_items} holds no exam questions.")
    results: dict[str, Any] = {}
    answer_scores: dict[str, list[tuple[float, float]]] = {}
    for name, path in tqdm(config.models.items(), desc="measure models", unit="model"):
        if not Path(path).is_dir():
            raise DataError(f"models: {name}: {path} is not a model directory.")
        model = LikelihoodModel(path, config.template, config.batch_size)
        results[name] = {"path": path}
        if pairs is not None:
            answer_scores[name] = model.answer_scores(pairs)
            results[name]["preferred_answer_rate"] = rates(pairs, [c > r for c, r in answer_scores[name]])
        if texts is not None:
            results[name]["general_loss"] = model.text_loss(texts)
        if exam is not None:
            results[name]["exam_accuracy_by_likelihood"] = exam_accuracy(model, exam, exam_candidates)
            results[name]["answer_letter_by_likelihood"] = exam_accuracy(model, exam, letter_candidates)
    if pairs is not None and config.reference:
        reference = answer_scores[config.reference]
        for name, scores in answer_scores.items():
            margins = [(c - rc) - (r - rr) for (c, r), (rc, rr) in zip(scores, reference, strict=True)]
            results[name]["reward_accuracy"] = rates(pairs, [margin > 0 for margin in margins])
    output = Path(config.output_dir) / "measure.json"
    summary = {
        "dataset_dir": config.dataset_dir,
        "pairs": config.pairs_dataset,
        "reference": config.reference,
        "exam_items": config.exam_items,
    }
    atomic_write_text(output, json.dumps({**summary, "models": results}, ensure_ascii=False, indent=2) + "\n")
    return [output]
