"""The preference-pair files of ``sfmed pref``: LLaMA-Factory ranking rows (:func:`sfmed_lf.formats.lf_rows.
to_ranking_row`) registered in the output's dataset_info.json, and reading what an earlier step wrote. Kept free
of heavy imports: the loader plugin imports it in every ``llamafactory-cli train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NotRequired

from sfmed_lf.errors import DataError
from sfmed_lf.formats.dataset_names import PAIRS_DATASET
from sfmed_lf.formats.datasets import local_dataset, register
from sfmed_lf.formats.lf_rows import dataset_info_entry
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.utils.jsonl import Fields, check_fields
from sfmed_lf.utils.provenance import text_digest

# a line of scores.jsonl: `sfmed pref score` writes it (one per reward model), `sfmed pref select` reads it; a pair's
# scores are [chosen, rejected], keyed by the pair's content
PAIR_SCORES = dict[str, tuple[float, float]]
SCORE_FIELDS = {"model": int, "fingerprint": dict[str, Any], "scores": PAIR_SCORES, "heldout": NotRequired[PAIR_SCORES]}


def register_pairs(info_path: str | os.PathLike[str], name: str, file_name: str) -> None:
    """Add (or replace) a ranking entry for ``file_name`` in a dataset_info.json, keeping its other entries."""
    register(info_path, name, dataset_info_entry(file_name, "ranking"))


def step_output(path: Path, producer: str, fields: Fields) -> list[dict[str, Any]]:
    """Rows another ``sfmed pref`` step wrote, each with ``fields`` checked; missing or empty names the step to run
    first."""
    written_by = f"sfmed pref {producer}"
    rows = [check_fields(str(at), row, fields, written_by) for at, row in read_rows(path)] if path.exists() else []
    if not rows:
        raise DataError(f"{path}: missing or empty; run `{written_by}` first.")
    return rows


def load_pairs(dataset_dir: str | os.PathLike[str], name: str = PAIRS_DATASET) -> list[PreferencePair]:
    """Every pair of a ranking dataset (any dataset_info entry: alpaca or sharegpt columns, as LLaMA-Factory reads
    them); a bad row is an error naming the file, the line and the field; pair ids must be unique."""
    dataset = local_dataset(dataset_dir, name)
    if dataset.entry.kind != "ranking":
        raise DataError(f"datasets: {dataset.info_path}: {name} is not a ranking dataset (set ranking: true).")
    pairs: list[PreferencePair] = []
    seen: dict[str, str] = {}
    for location, _, pair in dataset.records():
        assert isinstance(pair, PreferencePair)
        if pair.id in seen:
            raise location.error(f"{pair.id!r} is also the id of {seen[pair.id]}.", "id")
        seen[pair.id] = str(location)
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{dataset.files[0]}: no pairs.")
    return pairs


def pairs_digest(pairs: list[PreferencePair]) -> str:
    """Identity of a set of pairs by their content, in order."""
    return text_digest("\n".join(pair.key for pair in pairs))
