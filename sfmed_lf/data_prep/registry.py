"""``dataset_info.json`` entries of the SF-Med corpora (:mod:`sfmed_lf.formats.corpora`): one per converted file
and stage, and, where LLaMA-Factory can read the published hub files directly, a ``sfmed_hub_*`` entry with the
column mapping.

``dataset_info.json`` at the project root is generated from the table (``sfmed data registry --write``); a test
checks that the two agree.
"""

from __future__ import annotations

from typing import Any

from sfmed_lf.formats.corpora import CORPORA, form_of
from sfmed_lf.formats.lf_rows import dataset_info_entry


def registry_entries() -> dict[str, dict[str, Any]]:
    """Every registry entry of dataset_info.json, in table order."""
    entries: dict[str, dict[str, Any]] = {}
    for corpus in CORPORA:
        for stage in corpus.stages:
            entries[corpus.entry_name(stage)] = dataset_info_entry(corpus.converted_file(stage), form_of(corpus, stage))
        if corpus.hub_columns:
            hub_id = corpus.source.removeprefix("hf:")
            entries[f"sfmed_hub_{corpus.name}"] = {"hf_hub_url": hub_id, **corpus.hub_columns}
    return entries


def merged_dataset_info(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (the bundled and user entries, in their order) with the registry entries set to this table."""
    generated = registry_entries()
    return {**{name: entry for name, entry in current.items() if name not in generated}, **generated}
