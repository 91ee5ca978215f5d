"""``sfmed data convert NAME INPUT OUTPUT``: one corpus from its published raw schema to a LLaMA-Factory file.

NAME is a corpus of the registry (its raw format and, from ``--stage``, the output form follow) or a raw format
name with ``--form``. Rows the dataset itself excludes (webMedQA's wrong candidates) are counted; a bad row stops
the conversion with an error naming the file, the row and the field, or with ``skip_invalid`` is counted by
reason in the report (``OUTPUT.report.json``) with the first examples. The output is written atomically.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.data_prep.converters import RAW_FORMATS, Dialogue, Excluded, render
from sfmed_lf.data_prep.registry import CORPORA_BY_NAME, form_of
from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_open, atomic_write_text

MAX_EXAMPLES = 20
_LOCATION = re.compile(r"^.*?: row \d+: ")


def report_path(output_path: str | os.PathLike[str]) -> Path:
    return Path(f"{output_path}.report.json")


def resolve(name: str, stage: str | None, form: str | None) -> tuple[str, str]:
    """(raw format, output form) for a corpus name plus stage, or a raw format name plus form."""
    if name in CORPORA_BY_NAME:
        corpus = CORPORA_BY_NAME[name]
        if stage is None:
            if len(corpus.stages) > 1:
                raise DataError(f"{name} is registered for stages {', '.join(corpus.stages)}: pass --stage.")
            stage = corpus.stages[0]
        if stage not in corpus.stages:
            raise DataError(f"{name} is not a {stage} corpus in SF-Med (stages: {', '.join(corpus.stages)}).")
        return corpus.raw_format, form or form_of(corpus, stage)
    if name in RAW_FORMATS:
        if form is None:
            raise DataError(f"{name} is a raw format, not a registered corpus: pass --form pt|alpaca|sharegpt.")
        return name, form
    known = ", ".join([*CORPORA_BY_NAME, *RAW_FORMATS])
    raise DataError(f"unknown corpus or raw format {name!r}; known: {known}.")


def convert_corpus(
    name: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    stage: str | None = None,
    form: str | None = None,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    raw_name, form = resolve(name, stage, form)
    raw_format = RAW_FORMATS[raw_name]
    if raw_format.text_only and form != "pt":
        raise DataError(f"{name} is pre-training text; it has no {form} form.")
    source = os.fspath(input_path)
    if not os.path.exists(source):
        raise DataError(f"{source}: no such file or directory.")
    rows = written = trimmed = 0
    excluded: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    with atomic_open(output_path) as handle:
        for number, row in tqdm(raw_format.rows(source), desc=f"convert {name}", unit="row", mininterval=1.0):
            rows += 1
            try:
                sample = raw_format.parse(source, number, row)
                record = render(sample, form)
            except Excluded as reason:
                excluded[str(reason)] += 1
                continue
            except DataError as error:
                if not skip_invalid:
                    raise
                skipped[_LOCATION.sub("", str(error))] += 1
                if len(examples) < MAX_EXAMPLES:
                    examples.append(str(error))
                continue
            trimmed += sample.trimmed_turns if isinstance(sample, Dialogue) else 0
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    report = {
        "corpus": name,
        "raw_format": raw_name,
        "form": form,
        "input": source,
        "output": os.fspath(output_path),
        "rows_read": rows,
        "written": written,
        "excluded_by_dataset": dict(excluded),
        "skipped_invalid": sum(skipped.values()),
        "skip_reasons": dict(skipped.most_common()),
        "skip_examples": examples,
        "trimmed_unanswered_turns": trimmed,
    }
    atomic_write_text(report_path(output_path), json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if not written:
        invalid, dropped = sum(skipped.values()), sum(excluded.values())
        raise DataError(f"{source}: no row converted ({invalid} invalid, {dropped} excluded by the dataset).")
    return report
