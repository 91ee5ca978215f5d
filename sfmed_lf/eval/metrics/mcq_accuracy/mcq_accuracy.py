"""Hugging Face ``evaluate`` module: multiple-choice accuracy with SF-Med's option extraction (``sfmed_lf.eval.mcq``).

    metric = evaluate.load(sfmed_lf.eval.metric_path("mcq_accuracy"))
    metric.compute(predictions=["……故选C"], references=["C"], options=[{"A": ..., "C": ...}], multi_answer=[False])

An answer with no extractable option counts as wrong; ``unextracted`` counts them.
"""

from typing import Any

import datasets
import evaluate

from sfmed_lf.eval.mcq import extract_choice, is_correct


class McqAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy of free-form multiple-choice answers after rule-based option extraction.",
            citation="SF-Med §4.5; rules documented in sfmed_lf/eval/mcq.py.",
            inputs_description="predictions: answers; references: gold letters ('AC'); options: one dict per item.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(
        self,
        predictions: list[str],
        references: list[str],
        options: list[dict[str, str]],
        multi_answer: list[bool] | None = None,
    ) -> dict[str, Any]:
        if len(options) != len(predictions):
            raise ValueError(f"options has {len(options)} entries for {len(predictions)} predictions.")
        multi_answer = multi_answer or [len(gold) > 1 for gold in references]
        extractions = [
            extract_choice(answer, item_options) for answer, item_options in zip(predictions, options, strict=True)
        ]
        correct = [
            is_correct(e, gold, multi) for e, gold, multi in zip(extractions, references, multi_answer, strict=True)
        ]
        return {
            "accuracy": sum(correct) / len(correct) if correct else 0.0,
            "unextracted": sum(e.letters is None for e in extractions),
            "extracted": [e.letters for e in extractions],
        }
