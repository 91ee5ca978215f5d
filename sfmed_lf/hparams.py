"""SF-Med options for ``llamafactory-cli``: FinetuningArguments and DataArguments subclasses, so they work in YAML,
as key=value overrides, in ``llamafactory-cli train -h`` and in LLaMA-Board's extra-arguments box.

All option names start with ``sfmed_``. The subclasses are swapped into LLaMA-Factory's argument parser by
``sfmed_lf.integration``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import Literal

from llamafactory.hparams.data_args import DataArguments
from llamafactory.hparams.finetuning_args import FinetuningArguments

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig, Rescale
from sfmed_lf.produced_datasets import check_datasets_produced


@dataclass
class OnlineMergingArguments:
    """Online model merging for DPO (SF-Med §3.3, Lu et al. 2024)."""

    sfmed_merge_method: Literal["none", "ondare", "onties"] = field(
        default="none",
        metadata={
            "help": "Online merging in DPO: `ondare` (random sparsification) or `onties` (top-p magnitude + sign "
            "election). `none` trains with LLaMA-Factory's usual optimizer."
        },
    )
    sfmed_merge_base_model: str | None = field(
        default=None,
        metadata={
            "help": "Path or hub id of theta_base, the model SFT started from (tau = theta_sft - theta_base). "
            "Required with online merging; must have the policy's parameter names and shapes."
        },
    )
    sfmed_merge_sft_model: str | None = field(
        default=None,
        metadata={"help": "Path or hub id of theta_sft. Default: model_name_or_path (the policy's start weights)."},
    )
    sfmed_merge_keep_prob: float = field(
        default=0.01,
        metadata={"help": "p: fraction of entries kept by every sparsification, of tau (once) and of each update."},
    )
    sfmed_merge_alpha: float = field(
        default=1e-7,
        metadata={"help": "alpha in theta += alpha * tau' + (1 - alpha) * delta'. Default from the authors' script."},
    )
    sfmed_merge_rescale: Literal["authors", "none", "inverse_p", "l1"] = field(
        default="authors",
        metadata={
            "help": "Rescaling of kept entries: `authors` (as the authors' code: x 1/p for ondare, their F.dropout; "
            "none for onties), `none` (the paper's equations read literally), `inverse_p` (x 1/p for both) or "
            "`l1` (keep the L1 norm, the authors' rescale=True)."
        },
    )
    sfmed_merge_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the sparsification masks. Default: the training `seed`."},
    )
    sfmed_merge_check_replicas: bool = field(
        default=True,
        metadata={
            "help": "With several data-parallel ranks, compare a checksum of the weights of every rank at the end "
            "of training and fail if they differ (written to sfmed_replica_check.json)."
        },
    )

    @property
    def online_merging_enabled(self) -> bool:
        return self.sfmed_merge_method != MergeMethod.NONE.value

    def online_merging_config(self, default_seed: int) -> OnlineMergingConfig:
        return OnlineMergingConfig(
            method=MergeMethod(self.sfmed_merge_method),
            keep_prob=self.sfmed_merge_keep_prob,
            alpha=self.sfmed_merge_alpha,
            rescale=Rescale(self.sfmed_merge_rescale),
            seed=default_seed if self.sfmed_merge_seed is None else self.sfmed_merge_seed,
        )


def online_merging_off() -> tuple[str, ...]:
    """``key=value`` overrides that turn online merging off in a YAML that configures it: ``sfmed_merge_method=none``
    and every other ``sfmed_merge_*`` option back to its default (one that does nothing with method none is refused).
    For plain-DPO baselines run from the online-merging YAMLs (tests, benchmarks)."""

    def text(value: object) -> str:
        return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)

    return tuple(
        f"{item.name}={'none' if item.name == 'sfmed_merge_method' else text(item.default)}"
        for item in fields(OnlineMergingArguments)
    )


@dataclass
class PrivacyGuardArguments:
    """Inference-time privacy guard (sfmed_lf/privacy/guard.py) for `llamafactory-cli chat|api|webchat`."""

    sfmed_privacy_db: str | None = field(
        default=None,
        metadata={"help": "High-risk database (`sfmed privacy build-db`) of the served model; enables the guard."},
    )
    sfmed_privacy_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Hidden-state cosine similarity to a high-risk prompt at or above which the request is refused. "
            "Default: the database's calibrated threshold."
        },
    )
    sfmed_privacy_lexical_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Share (IDF-weighted) of a high-risk prompt's character n-grams found in the conversation at or "
            "above which the request is refused. Default: the database's calibrated threshold."
        },
    )
    sfmed_privacy_output_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Share (IDF-weighted) of a memorized suffix's character n-grams found in the answer at or above "
            "which the answer is replaced by the secure counterpart. Default: the database's calibrated threshold."
        },
    )
    sfmed_privacy_checks: str = field(
        default="embedding,lexical,output",
        metadata={"help": "Checks the guard runs, comma-separated: embedding, lexical, output."},
    )
    sfmed_privacy_hold_back: int | None = field(
        default=None,
        metadata={
            "help": "Characters of a streamed answer held back for the output check. Default: the database's value "
            "(long enough to catch a memorized suffix before any of it is sent)."
        },
    )
    sfmed_privacy_log: str | None = field(
        default=None,
        metadata={"help": "JSONL file to which every refusal is appended (check, score, threshold, record id)."},
    )

    @property
    def sfmed_privacy_check_list(self) -> list[str]:
        return [check.strip() for check in self.sfmed_privacy_checks.split(",") if check.strip()]

    def _validate_privacy_guard(self) -> None:
        if self.sfmed_privacy_threshold is not None and not -1 <= self.sfmed_privacy_threshold <= 1:
            raise ValueError("sfmed_privacy_threshold is a cosine similarity: it must lie in [-1, 1].")
        for name in ("sfmed_privacy_lexical_threshold", "sfmed_privacy_output_threshold"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name} is an overlap share: it must lie in (0, 1].")
        unknown = sorted(set(self.sfmed_privacy_check_list) - {"embedding", "lexical", "output"})
        if unknown:
            raise ValueError(f"sfmed_privacy_checks: unknown check(s) {unknown}; use embedding, lexical, output.")
        if self.sfmed_privacy_hold_back is not None and self.sfmed_privacy_hold_back < 0:
            raise ValueError("sfmed_privacy_hold_back must be >= 0.")


@dataclass
class TrainingDetailArguments:
    """SF-Med's training details that LLaMA-Factory has no option for (SF-Med §4.1)."""

    sfmed_dropout: float | None = field(
        default=None,
        metadata={
            "help": "Dropout rate set in the model config's dropout fields before the model is built (SF-Med §4.1 "
            "trains with 0.1). Qwen2/Qwen2-MoE/Qwen3/Qwen3-MoE: attention_dropout, the only dropout they honour; "
            "other architectures are refused. The saved checkpoint keeps its own values. Default: the "
            "checkpoint's values."
        },
    )


@dataclass
class PreferenceSelectionArguments:
    """Preference-strength flip/drop applied while LLaMA-Factory loads a ranking dataset (sfmed_lf/preference)."""

    sfmed_pref_audit: str | None = field(
        default=None,
        metadata={"help": "audit.jsonl of `sfmed pref select` (every pair's ensemble scores); enables the plugin."},
    )
    sfmed_pref_flip_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of pairs with the lowest mean strength whose labels are flipped."}
    )
    sfmed_pref_drop_fraction: float = field(
        default=0.1, metadata={"help": "Fraction of pairs with the highest mean strength that are dropped."}
    )
    sfmed_pref_flip_below: float | None = field(
        default=None, metadata={"help": "Flip pairs whose mean strength is below this (replaces the fraction)."}
    )
    sfmed_pref_drop_above: float | None = field(
        default=None, metadata={"help": "Drop pairs whose mean strength is above this (replaces the fraction)."}
    )


@dataclass
class SFMedDataArguments(DataArguments, PreferenceSelectionArguments):
    """LLaMA-Factory's DataArguments plus the preference-selection options; every dataset named must have been
    produced (:mod:`sfmed_lf.produced_datasets`)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("sfmed_pref_flip_fraction", "sfmed_pref_drop_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1).")
        if self.sfmed_pref_audit and self.streaming:
            raise ValueError("sfmed_pref_audit ranks every pair first; it cannot be used with streaming: true.")
        check_datasets_produced(self)


_CONFLICTING_OPTIMIZERS = ("use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon")
_STAGES_WITHOUT_DROPOUT = ("dpo", "kto")


@dataclass
class SFMedFinetuningArguments(
    FinetuningArguments, OnlineMergingArguments, PrivacyGuardArguments, TrainingDetailArguments
):
    """LLaMA-Factory's FinetuningArguments plus the SF-Med options."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_online_merging()
        self._validate_dropout()
        self._validate_privacy_guard()

    def _validate_dropout(self) -> None:
        if self.sfmed_dropout is None:
            return
        if not 0 <= self.sfmed_dropout < 1:
            raise ValueError(f"sfmed_dropout must lie in [0, 1), got {self.sfmed_dropout}.")
        if self.stage in _STAGES_WITHOUT_DROPOUT:
            raise ValueError(
                f"sfmed_dropout with `stage: {self.stage}`: LLaMA-Factory's {self.stage.upper()} trainer trains "
                "without dropout (disable_dropout, TRL's convention: the policy's and the reference model's "
                "log-probabilities must be computed alike). Remove sfmed_dropout from this run."
            )

    def _validate_online_merging(self) -> None:
        def fail(problem: str) -> None:
            raise ValueError(f"sfmed_merge_method={self.sfmed_merge_method}: {problem}")

        if self.sfmed_merge_method not in {m.value for m in MergeMethod}:
            fail(f"unknown method; choose one of {', '.join(m.value for m in MergeMethod)}.")
        if not self.online_merging_enabled:
            inert = [
                name
                for name, item in OnlineMergingArguments.__dataclass_fields__.items()
                if name != "sfmed_merge_method" and getattr(self, name) != item.default
            ]
            if inert:
                fail(f"{', '.join(inert)} set, but they do nothing without online merging (method ondare or onties).")
            return
        if self.stage != "dpo":
            fail(f"online merging is implemented for `stage: dpo`, got `stage: {self.stage}`.")
        if self.finetuning_type != "full":
            fail(
                f"needs `finetuning_type: full`, got `{self.finetuning_type}`: tau = theta_sft - theta_base and the "
                "merged update cover every weight of the model, which LoRA and freeze tuning do not train."
            )
        if not self.sfmed_merge_base_model:
            fail("set `sfmed_merge_base_model` to theta_base, the model SFT started from.")
        if self.sfmed_merge_rescale not in {r.value for r in Rescale}:
            fail(f"sfmed_merge_rescale must be one of {', '.join(r.value for r in Rescale)}.")
        for option in _CONFLICTING_OPTIMIZERS:
            if getattr(self, option, False):
                fail(f"`{option}` selects another optimizer; online merging replaces AdamW and cannot combine.")
        try:
            self.online_merging_config(default_seed=0)
        except ValueError as error:
            fail(str(error))


# Importing this module first imports LLaMA-Factory's parser, whose patch (sfmed_lf.integration, when the plugin is
# active) needs the classes above: it waited for them.
if (_integration := sys.modules.get("sfmed_lf.integration")) is not None:
    _integration.finish_deferred_patches(__name__)
