"""The flip/drop of ``sfmed pref select`` applied while ``llamafactory-cli train`` loads a ranking dataset.

With ``sfmed_pref_audit: .../audit.jsonl`` in a DPO or RM YAML, the merged dataset (LLaMA-Factory's standard
format: ``_system``, ``_prompt`` turns, ``_response`` = [chosen, rejected]) is matched pair by pair to the audit by
the pair's texts; the rule of :mod:`sfmed_lf.preference.selection` ranks the audit's mean strengths with the YAML's
fractions or thresholds; flipped pairs swap their responses, dropped pairs are removed. A pair missing from the
audit is an error naming its row: nothing is dropped silently. With the same settings the result equals
``selected.jsonl`` of the offline command.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.pairs import pair_key
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.preference.selection import DROP, FLIP, select_actions
from sfmed_lf.utils.jsonl import check_fields


def audit_actions(data_args: Any) -> dict[str, str]:
    """pair key -> action under the YAML's rule, ranked over every pair of the audit."""
    path = data_args.sfmed_pref_audit
    if not Path(path).is_file():
        raise DataError(f"sfmed_pref_audit: {path} does not exist (it is the audit.jsonl of `sfmed pref select`).")
    rows = []
    for location, row in read_rows(path):
        rows.append(check_fields(str(location), row, {"key": str, "mean_strength": float}, "sfmed pref select"))
    if not rows:
        raise DataError(f"sfmed_pref_audit: {path} is empty.")
    actions = select_actions(
        [row["mean_strength"] for row in rows],
        data_args.sfmed_pref_flip_fraction,
        data_args.sfmed_pref_drop_fraction,
        data_args.sfmed_pref_flip_below,
        data_args.sfmed_pref_drop_above,
    )
    return {row["key"]: action for row, action in zip(rows, actions, strict=True)}


def apply_selection(dataset: Any, data_args: Any) -> Any:
    actions = audit_actions(data_args)

    def key_of(example: dict[str, Any]) -> str:
        prompt = [example["_system"] or "", *(turn["content"] for turn in example["_prompt"])]
        return pair_key(prompt, example["_response"][0]["content"], example["_response"][1]["content"])

    found = []
    for row, example in enumerate(dataset):
        key = key_of(example)
        if key not in actions:
            raise DataError(
                f"ranking dataset row {row + 1} ({example['_prompt'][-1]['content'][:40]!r}…) is not in "
                f"{data_args.sfmed_pref_audit}: score it with `sfmed pref score` and `select` first."
            )
        found.append(actions[key])

    def flip(example: dict[str, Any], index: int) -> dict[str, Any]:
        if found[index] == FLIP:
            example["_response"] = [example["_response"][1], example["_response"][0]]
        return example

    flipped = dataset.map(flip, with_indices=True, desc="sfmed preference flip")
    return flipped.filter(lambda _, index: found[index] != DROP, with_indices=True, desc="sfmed preference drop")


def select_while_loading(get_merged_dataset: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap LLaMA-Factory's ``_get_merged_dataset(dataset_names, model_args, data_args, training_args, stage, …)``."""
    if getattr(get_merged_dataset, "sfmed_lf_wrapped", False):
        return get_merged_dataset

    @functools.wraps(get_merged_dataset)
    def wrapper(dataset_names, model_args, data_args, training_args, stage, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        dataset = get_merged_dataset(dataset_names, model_args, data_args, training_args, stage, *args, **kwargs)
        audit = getattr(data_args, "sfmed_pref_audit", None)
        if audit is None or dataset is None:
            return dataset
        if stage != "rm":
            raise DataError(f"sfmed_pref_audit applies to ranking datasets (stage dpo or rm), not stage {stage}.")
        if isinstance(dataset, dict):
            return {name: apply_selection(part, data_args) for name, part in dataset.items()}
        return apply_selection(dataset, data_args)

    wrapper.sfmed_lf_wrapped = True  # type: ignore[attr-defined]
    return wrapper
