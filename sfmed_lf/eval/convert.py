"""``sfmed eval convert NAME INPUT OUTPUT``: a benchmark's published file -> evaluation items (JSONL).

NAME is a raw schema of :data:`sfmed_lf.formats.raw.RAW_SCHEMAS` or a registered corpus (the same names as
``sfmed data convert``): dialogue rows become dialogue items (the last answer is the reference, earlier turns the
history), exam rows multiple-choice items. Item ids are ``DATASET-ID`` with the source's ``id`` where it has one
(they must be unique), else ``DATASET-ROW``. Rows the dataset excludes (webMedQA's wrong candidates) are counted; a
bad row is an error naming the file, the line and the field, or, with ``skip_invalid``, counted in
``OUTPUT.report.json``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.corpora import source_schema
from sfmed_lf.formats.items import EvalItem, item_from_sample
from sfmed_lf.formats.raw import Excluded
from sfmed_lf.formats.reading import Problems
from sfmed_lf.utils.io import atomic_open, atomic_write_text, refuse_to_overwrite


def convert_items(
    name: str, input_path: str | os.PathLike[str], dataset: str | None = None, skip_invalid: bool = False
) -> tuple[list[EvalItem], dict[str, Any]]:
    """(items, report) of one benchmark file."""
    schema, _ = source_schema(name)
    if schema.kind == "text":
        raise DataError(f"{name} is pre-training text: it has no evaluation items.")
    source = os.fspath(input_path)
    if not os.path.exists(source):
        raise DataError(f"INPUT: {source} does not exist.")
    dataset = dataset or Path(source).stem
    problems = Problems(skip_invalid)
    items: list[EvalItem] = []
    excluded: Counter[str] = Counter()
    seen: dict[str, str] = {}
    for location, row in schema.read(source, problems):
        try:
            sample = schema.parse(location, row)
        except Excluded as reason:
            excluded[str(reason)] += 1
            continue
        except DataError as error:
            problems.handle(error, location)
            continue
        source_id = sample.metadata.get("id", "")
        item_id = f"{dataset}-{source_id or location.row}"
        if item_id in seen:
            raise location.error(
                f"{item_id!r} is also the id of {seen[item_id]}; ids key resumable outputs and must be unique.", "id"
            )
        seen[item_id] = str(location)
        items.append(item_from_sample(sample, item_id, dataset))
    if not items:
        raise DataError(f"{source}: no item converted ({problems.skipped} invalid, {sum(excluded.values())} excluded).")
    report = {"schema": schema.name, "input": source, "items": len(items), "excluded_by_dataset": dict(excluded)}
    return items, {**report, **problems.report()}


def write_items(
    name: str, input_path: str, output_path: str, dataset: str | None = None, skip_invalid: bool = False
) -> list[Path]:
    refuse_to_overwrite(output_path, [input_path], option="OUTPUT")
    items, report = convert_items(name, input_path, dataset, skip_invalid)
    with atomic_open(output_path) as handle:
        for item in items:
            handle.write(json.dumps(item.row(), ensure_ascii=False) + "\n")
    report_file = Path(f"{output_path}.report.json")
    atomic_write_text(report_file, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return [Path(output_path), report_file]
