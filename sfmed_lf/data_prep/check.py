"""``sfmed data check NAME|FILE``: every row of a LLaMA-Factory dataset read as LLaMA-Factory would read it, and
the problems counted before anyone trains on it.

Errors (the row would be skipped, mangled or crash LLaMA-Factory's loader): undecodable bytes, invalid JSON, a row
that is not an object, a missing field, a field of the wrong type, roles out of order or unknown, an empty turn, a
conversation that ends without an answer, chosen equal to rejected, a system column the entry maps but the row
lacks. Warnings (LLaMA-Factory reads the row but silently ignores part of it): a ``system`` or ``history`` the entry
does not map. A dataset_info.json name is read with its entry (column mapping, tags, ranking); a file without one
is read in the form each row's shape shows.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from sfmed_lf.data_prep.config import CheckConfig
from sfmed_lf.errors import DataError
from sfmed_lf.formats.datasets import LocalDataset, dataset_from_file, local_dataset
from sfmed_lf.formats.lf_rows import infer_entry
from sfmed_lf.formats.reading import Problems

WARNINGS = ("system_not_mapped", "history_not_mapped")


def check_dataset(config: CheckConfig) -> dict[str, Any]:
    """Counts per problem, examples per problem, and the number of rows read and rows without error."""
    source = config.dataset
    dataset: LocalDataset = dataset_from_file(source) if Path(source).is_file() else local_dataset(
        config.dataset_dir, source, option="dataset"
    )  # fmt: skip
    problems = Problems(skip_invalid=True)
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    rows = good = 0
    kinds: Counter[str] = Counter()
    for location, row in dataset.rows(problems):
        rows += 1
        try:
            entry = dataset.entry or infer_entry(dataset.name, location, row)
            sample = entry.read(location, row)
        except DataError as error:
            counts[error.code] += 1
            if len(examples[error.code]) < config.examples:
                examples[error.code].append(str(error))
            continue
        good += 1
        kinds[type(sample).__name__] += 1
        for code, message in entry.warnings(row):
            counts[code] += 1
            if len(examples[code]) < config.examples:
                examples[code].append(f"{location}: {message}")
    for code, count in problems.codes.items():  # rows the reader could not read
        counts[code] += count
        rows += count
    for code, message in problems.coded_examples:
        if len(examples[code]) < config.examples:
            examples[code].append(message)
    return {
        "dataset": dataset.name,
        "files": [str(path) for path in dataset.files],
        "rows": rows,
        "rows_without_error": good,
        "read_as": dict(kinds),
        "problems": {code: counts[code] for code in sorted(counts)},
        "examples": dict(examples),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{report['dataset']}: {report['rows']} rows, {report['rows_without_error']} read without error "
        f"({', '.join(f'{n} {kind}' for kind, n in report['read_as'].items()) or 'none'})",
    ]
    if not report["problems"]:
        lines.append("  no problems")
    for code, count in report["problems"].items():
        kind = "warning" if code in WARNINGS else "error"
        lines.append(f"  {code}: {count} ({kind})")
        lines += [f"      {example}" for example in report["examples"].get(code, [])]
    return "\n".join(lines)
