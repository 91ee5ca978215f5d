"""Hugging Face ``evaluate`` module: Chinese Rouge-L F (characters, or jieba words), as ``sfmed eval rouge``.

metric = evaluate.load(sfmed_lf.eval.metric_path("chinese_rouge_l"))
metric.compute(predictions=[...], references=[...], tokenizer="char")  # {"rouge_l": mean F, "scores": [...]}
"""

from typing import Any

import datasets
import evaluate

from sfmed_lf.text.rouge import rouge_l_f


class ChineseRougeL(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Rouge-L F over characters (default) or jieba words; empty text scores 0.",
            citation="Lin, 2004. ROUGE: A Package for Automatic Evaluation of Summaries.",
            inputs_description="predictions, references: lists of strings; tokenizer: 'char' or 'jieba'.",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions: list[str], references: list[str], tokenizer: str = "char") -> dict[str, Any]:
        scores = [rouge_l_f(p, r, tokenizer) for p, r in zip(predictions, references, strict=True)]
        return {"rouge_l": sum(scores) / len(scores) if scores else 0.0, "scores": scores}
