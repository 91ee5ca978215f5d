"""Options of ``sfmed eval`` (one flat LF-style YAML for every subcommand)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfmed_lf.serving.chat_client import EndpointOptions


@dataclass(frozen=True)
class ModelSource:
    """Where a compared model's answers come from: a local checkpoint, or an OpenAI-compatible endpoint."""

    label: str  # "a" or "b": names the answers file
    name: str
    path: str | None
    endpoint: str | None
    served_model: str | None


@dataclass
class EvalConfig(EndpointOptions):
    output_dir: str
    items: list[str] = field(default_factory=list)  # normalised item files (sfmed eval convert writes them)
    model_a_name: str = "model A"
    model_a_path: str | None = None
    model_a_endpoint: str | None = None  # e.g. http://127.0.0.1:8000/v1
    model_a_served_name: str | None = None  # the endpoint's model name; default model_a_name
    model_b_name: str = "model B"
    model_b_path: str | None = None
    model_b_endpoint: str | None = None
    model_b_served_name: str | None = None
    template: str = "sfmed"  # LLaMA-Factory template rendering the prompts of local checkpoints (as in training)
    system: str | None = None  # default: the sfmed template's instruction (multi-turn one for dialogue history)
    max_new_tokens: int = 512
    batch_size: int = 8  # local models: prompts per generate() call
    concurrency: int = 4  # endpoints: requests in flight
    rouge_tokenizer: str = "char"  # or "jieba"
    tie_margin: float = 0.0
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_max_tokens: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.items, str):
            self.items = [self.items]
        for label in ("a", "b"):
            path, endpoint = getattr(self, f"model_{label}_path"), getattr(self, f"model_{label}_endpoint")
            if path and endpoint:
                raise ValueError(f"model_{label}_path and model_{label}_endpoint are exclusive; give one.")
        if self.rouge_tokenizer not in ("char", "jieba"):
            raise ValueError(f"rouge_tokenizer must be 'char' or 'jieba', not {self.rouge_tokenizer!r}.")
        if self.tie_margin < 0:
            raise ValueError("tie_margin must be >= 0.")
        if self.judge_endpoint and not self.judge_model:
            raise ValueError("judge_endpoint needs judge_model (the served model's name).")
        for name in ("max_new_tokens", "batch_size", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")

    def model(self, label: str) -> ModelSource:
        name = getattr(self, f"model_{label}_name")
        return ModelSource(
            label=label,
            name=name,
            path=getattr(self, f"model_{label}_path"),
            endpoint=getattr(self, f"model_{label}_endpoint"),
            served_model=getattr(self, f"model_{label}_served_name") or name,
        )

    def answers_path(self, label: str) -> Path:
        return Path(self.output_dir) / "answers" / f"{label}.jsonl"
