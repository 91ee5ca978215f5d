"""Options of ``sfmed eval`` (one flat LF-style YAML for every step). Two models are compared: the candidate
(label ``a`` in the output files) and the baseline (``b``), each a local checkpoint (``<role>_model_name_or_path``,
rendered with ``<role>_template``) or an OpenAI-compatible endpoint (``<role>_url`` + ``<role>_model``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from sfmed_lf.serving.chat_client import EndpointOptions
from sfmed_lf.steps import StepConfig, option

ROLES = {"a": "candidate", "b": "baseline"}


@dataclass(frozen=True)
class ModelSource:
    """Where a compared model's answers come from: a local checkpoint, or an OpenAI-compatible endpoint."""

    label: str  # "a" (candidate) or "b" (baseline): names the answers file
    name: str
    path: str | None
    template: str
    endpoint: str | None
    served_model: str | None

    @property
    def role(self) -> str:
        return ROLES[self.label]


def _renamed() -> dict[str, str]:
    renamed = {
        "judge_endpoint": "use judge_url.",
        "judge_max_tokens": "use judge_max_new_tokens.",
    }
    for label, role in ROLES.items():
        renamed |= {
            f"model_{label}_name": f"use {role}_name.",
            f"model_{label}_path": f"use {role}_model_name_or_path (with {role}_template or template).",
            f"model_{label}_endpoint": f"use {role}_url.",
            f"model_{label}_served_name": f"use {role}_model (the model name at {role}_url).",
        }
    return renamed


@dataclass
class EvalConfig(EndpointOptions, StepConfig):
    renamed_options: ClassVar[dict[str, str]] = _renamed()

    output_dir: str = option(help="answers/, rouge.json, judge.json, mcq.json, report.md/.json/.png.")
    items: list[str] = option(default_factory=list, help="Evaluation item files (written by `sfmed eval convert`).")
    candidate_name: str = option("candidate", help="The candidate's name in the reports (model A).")
    candidate_model_name_or_path: str | None = option(None, help="The candidate as a local checkpoint.")
    candidate_template: str | None = option(None, help="LLaMA-Factory template of the candidate (default: template).")
    candidate_url: str | None = option(None, help="The candidate behind an OpenAI-compatible endpoint.")
    candidate_model: str | None = option(None, help="The candidate's model name at candidate_url.")
    baseline_name: str = option("baseline", help="The baseline's name in the reports (model B).")
    baseline_model_name_or_path: str | None = option(None, help="The baseline as a local checkpoint.")
    baseline_template: str | None = option(None, help="LLaMA-Factory template of the baseline (default: template).")
    baseline_url: str | None = option(None, help="The baseline behind an OpenAI-compatible endpoint.")
    baseline_model: str | None = option(None, help="The baseline's model name at baseline_url.")
    template: str = option("sfmed", help="LLaMA-Factory template rendering local checkpoints' prompts, as training.")
    system: str | None = option(
        None, help="System prompt of items without one (null: SF-Med's doctor instruction, multi-turn with history)."
    )
    max_new_tokens: int = option(512, help="Tokens per answer.")
    batch_size: int = option(8, help="Local models: prompts per generate() call.")
    concurrency: int = option(4, help="Endpoints: requests in flight.")
    rouge_tokenizer: Literal["char", "jieba"] = option("char", help="Rouge-L tokens: characters or jieba words.")
    tie_margin: float = option(0.0, help="Score difference within which an item is a tie.")
    judge_url: str | None = option(None, help="OpenAI-compatible endpoint of the judge (the judge step needs it).")
    judge_model: str | None = option(None, help="The judge's model name at judge_url.")
    judge_max_new_tokens: int = option(512, help="Tokens per judgment.")

    def __post_init__(self) -> None:
        if isinstance(self.items, str):
            self.items = [self.items]
        for role in ROLES.values():
            path, url = getattr(self, f"{role}_model_name_or_path"), getattr(self, f"{role}_url")
            if path and url:
                raise ValueError(f"{role}_model_name_or_path and {role}_url are exclusive; give one.")
            if url and not getattr(self, f"{role}_model"):
                raise ValueError(f"{role}_url needs {role}_model (the served model's name).")
            if getattr(self, f"{role}_template") and not path:
                raise ValueError(
                    f"{role}_template applies to {role}_model_name_or_path only (an endpoint applies its own)."
                )
            if getattr(self, f"{role}_model") and not url:
                raise ValueError(f"{role}_model names the model at {role}_url; set {role}_url or remove it.")
        if self.tie_margin < 0:
            raise ValueError("tie_margin must be >= 0.")
        if self.judge_url and not self.judge_model:
            raise ValueError("judge_url needs judge_model (the served model's name).")
        for name in ("max_new_tokens", "batch_size", "concurrency", "judge_max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")

    def unused_options(self) -> dict[str, str]:
        if self.judge_url:
            return {}
        return dict.fromkeys(
            ("judge_model", "judge_max_new_tokens"), "it configures the judge at judge_url, which is not set"
        )

    def model(self, label: str) -> ModelSource:
        role = ROLES[label]
        return ModelSource(
            label=label,
            name=getattr(self, f"{role}_name"),
            path=getattr(self, f"{role}_model_name_or_path"),
            template=getattr(self, f"{role}_template") or self.template,
            endpoint=getattr(self, f"{role}_url"),
            served_model=getattr(self, f"{role}_model"),
        )

    def answers_path(self, label: str) -> Path:
        return Path(self.output_dir) / "answers" / f"{label}.jsonl"
