"""``sfmed data convert NAME INPUT OUTPUT``: one corpus from its published raw schema to a LLaMA-Factory file.

NAME is a corpus of the registry (its raw schema and, from ``--stage``, the output form follow; a dialogue or exam
corpus the paper used for pre-training also has its natural SFT form with ``--stage sft``) or a raw schema name
with ``--form``. Rows the dataset itself excludes (webMedQA's wrong candidates) are counted; a bad row stops the
conversion with an error naming the file, the line and the field, or with ``skip_invalid`` is counted by reason in
the report (``OUTPUT.report.json``) with the first examples. The output is written atomically, and only when at
least one row converted: a failed run leaves an existing output as it was.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation
from sfmed_lf.formats.corpora import form_of, source_schema
from sfmed_lf.formats.exam import ExamQuestion
from sfmed_lf.formats.lf_rows import FORMS, render
from sfmed_lf.formats.raw import Excluded, RawSchema
from sfmed_lf.formats.reading import Problems
from sfmed_lf.utils.io import atomic_open, atomic_write_text, refuse_to_overwrite

STAGES = ("pt", "sft")
CONVERT_FORMS = tuple(form for form in FORMS if form != "ranking")


def report_path(output_path: str | os.PathLike[str]) -> Path:
    return Path(f"{output_path}.report.json")


def resolve(name: str, stage: str | None, form: str | None) -> tuple[RawSchema, str]:
    """(raw schema, output form) for a corpus name plus stage, or a raw schema name plus form."""
    if stage is not None and stage not in STAGES:
        raise DataError(f"--stage {stage!r}: use pt or sft.")
    if form is not None and form not in CONVERT_FORMS:
        raise DataError(f"--form {form!r}: use {', '.join(CONVERT_FORMS)}.")
    schema, corpus = source_schema(name)
    if corpus is not None:
        if stage is None:
            if len(corpus.stages) > 1:
                raise DataError(f"{name} is registered for stages {', '.join(corpus.stages)}: pass --stage.")
            stage = corpus.stages[0]
        form = form or form_of(corpus, stage)
    elif form is None:
        if stage == "pt":
            form = "pt"
        else:
            raise DataError(f"{name} is a raw schema, not a registered corpus: pass --form {'|'.join(CONVERT_FORMS)}.")
    if schema.kind == "text" and form != "pt":
        raise DataError(f"{name} is pre-training text; it has no {form} form.")
    return schema, form


def convert_corpus(
    name: str,
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    stage: str | None = None,
    form: str | None = None,
    skip_invalid: bool = False,
) -> dict[str, Any]:
    schema, form = resolve(name, stage, form)
    source = os.fspath(input_path)
    if not os.path.exists(source):
        raise DataError(f"INPUT: {source} does not exist.")
    refuse_to_overwrite(output_path, [source], option="OUTPUT")
    refuse_to_overwrite(report_path(output_path), [source], option="OUTPUT")
    problems = Problems(skip_invalid)
    rows = written = 0
    excluded: Counter[str] = Counter()
    unanswered = invalid_rows = 0
    with atomic_open(output_path) as handle:
        for location, row in tqdm(schema.read(source, problems), desc=f"convert {name}", unit="row", mininterval=1.0):
            rows += 1
            try:
                sample = schema.parse(location, row)
                if isinstance(sample, ExamQuestion):
                    sample = sample.conversation()
                record = render(sample, form)
            except Excluded as reason:
                excluded[str(reason)] += 1
                continue
            except DataError as error:
                problems.handle(error, location)
                invalid_rows += 1
                continue
            unanswered += isinstance(sample, Conversation) and "unanswered" in sample.metadata
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
        if not written:  # raised inside the block: the temporary file is discarded, an existing output stays
            raise DataError(
                f"{source}: no row converted ({rows} read, {problems.skipped} invalid, {sum(excluded.values())} "
                "excluded by the dataset); nothing written."
            )
    report = {
        "corpus": name,
        "raw_schema": schema.name,
        "form": form,
        "input": source,
        "output": os.fspath(output_path),
        "rows_read": rows + problems.skipped - invalid_rows,  # rows the reader skipped never reached the loop
        "written": written,
        "excluded_by_dataset": dict(excluded),
        **problems.report(),
        "unanswered_last_turns": unanswered,
    }
    atomic_write_text(report_path(output_path), json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    return report
