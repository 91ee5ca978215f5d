"""High-risk database: what the guard compares requests and answers with, for every memorized record.

- the served model's intermediate embedding of the record's query (sfmed_lf/privacy/embeddings.py), in a FAISS
  inner-product index (cosine: rows are unit-norm) — the paper's input check;
- the query's and the memorized suffix's character n-grams with their weights (sfmed_lf/privacy/ngrams.py) — the
  lexical input check and the output check;
- the secure counterpart served instead of the memorized text;
- the identifiers (the audit's ``sensitive_pattern``) the output check refuses to give away: the entries' own and,
  with ``protect_identifiers: audited``, those of every other audited record (``protected.jsonl``);
- the thresholds calibrated by ``sfmed privacy build-db`` (sfmed_lf/privacy/calibrate.py) and the fingerprint of the
  model it was built for (sfmed_lf/privacy/fingerprint.py), checked when the guard loads.

Files in ``output_dir``: ``index.faiss``, ``center.npy`` (mean pooled state of every audited query, subtracted
before normalising), ``entries.jsonl`` (row i = index vector i), ``protected.jsonl``, ``ngrams.json``, ``meta.json``;
with calibration also ``calibration_report.json`` and ``calibration_scores.png``. Each is written atomically,
``meta.json`` last.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired

import numpy as np

from sfmed_lf.errors import DataError
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.privacy.config import AUDIT_FIELDS, CHECKS, DatabaseConfig
from sfmed_lf.privacy.embeddings import centred_unit_rows, pooled_states, resolve_layer
from sfmed_lf.privacy.fingerprint import model_content_fingerprint
from sfmed_lf.privacy.identifiers import compact, record_identifiers
from sfmed_lf.privacy.ngrams import NgramIndex, idf, idf_weights
from sfmed_lf.text.ngrams import char_ngrams
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_npy, atomic_write_text, read_json, require_file
from sfmed_lf.utils.jsonl import check_fields

FORMAT_VERSION = 2


def secure_counterparts(config: DatabaseConfig) -> dict[str, str]:
    if not config.secure_responses:
        return {}
    require_file(config.secure_responses, "secure_responses")
    counterparts = {}
    for location, row in read_rows(config.secure_responses):
        check_fields(str(location), row, {"id": str, "secure_response": str})
        if not row["secure_response"].strip():
            raise location.error("is empty.", "secure_response")
        counterparts[row["id"]] = row["secure_response"].strip()
    return counterparts


# what a refusal names and serves, and what the checks match: a row without them is refused at load, not at a refusal
PROTECTED_FIELDS = {"id": str, "secure_response": str, "identifiers": NotRequired[list[str]]}
ENTRY_FIELDS = {**PROTECTED_FIELDS, "query": str, "suffix": str}


def _database_rows(path: Path, fields: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for location, row in read_rows(path):
        check_fields(str(location), row, fields, "sfmed privacy build-db")
        for name in ("id", "secure_response"):
            if not row[name].strip():
                raise location.error("is empty; rebuild the database with `sfmed privacy build-db`.", name)
        if not all(value.strip() for value in row.get("identifiers", [])):  # "" would be in every answer
            raise location.error("holds an empty identifier; rebuild the database.", "identifiers")
        rows.append(row)
    return rows


def _audit_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"{path} does not exist: run `sfmed privacy audit` first.")
    return [check_fields(str(location), row, AUDIT_FIELDS, "sfmed privacy audit") for location, row in read_rows(path)]


def audit_pattern(audit_dir: Path) -> str | None:
    """The audit's ``sensitive_pattern`` (audit_report.json): the identifiers the guard refuses to give away."""
    path = audit_dir / "audit_report.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: run `sfmed privacy audit` first.")
    pattern = read_json(path, "sfmed privacy audit").get("sensitive_pattern")
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except (TypeError, re.error) as error:
        raise DataError(f"{path}: field 'sensitive_pattern' is not a regular expression ({error}).") from error
    return pattern


@dataclass
class HighRiskDatabase:
    directory: Path
    index: Any  # faiss.Index
    center: np.ndarray
    entries: list[dict[str, Any]]
    layer: int
    pooling: str
    dimension: int
    lexical: NgramIndex  # over the entries' queries
    output: NgramIndex  # over the entries' memorized suffixes
    thresholds: dict[str, float | None]
    hold_back: int  # characters a streamed answer is held back
    model: dict[str, Any]  # content fingerprint of the model it was built for
    protected: list[dict[str, Any]] = field(default_factory=list)  # other audited records: id, identifiers

    @classmethod
    def load(cls, directory: str | Path) -> HighRiskDatabase:
        import faiss

        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            index = faiss.deserialize_index(np.frombuffer((directory / "index.faiss").read_bytes(), dtype=np.uint8))
            center = np.load(directory / "center.npy")
            entries = _database_rows(directory / "entries.jsonl", ENTRY_FIELDS)
            protected_path = directory / "protected.jsonl"  # absent in databases built before it existed
            protected = _database_rows(protected_path, PROTECTED_FIELDS) if protected_path.exists() else []
            ngrams = json.loads((directory / "ngrams.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RuntimeError) as error:
            if isinstance(error, DataError):
                raise
            message = f"{directory}: not a high-risk database ({error}); build it with `sfmed privacy build-db`."
            raise DataError(message) from error
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(
                f"{directory}: high-risk database format {meta.get('format', 1)}, this version reads format "
                f"{FORMAT_VERSION} (input and output checks, calibrated thresholds, model fingerprint); rebuild it "
                "with `sfmed privacy build-db`."
            )
        if index.ntotal != len(entries) or meta["count"] != len(entries):
            raise DataError(f"{directory}: index has {index.ntotal} vectors for {len(entries)} entries; rebuild it.")
        return cls(
            directory,
            index,
            center,
            entries,
            meta["layer"],
            meta["pooling"],
            meta["dimension"],
            NgramIndex.from_json(ngrams["lexical"], [entry["query"] for entry in entries]),
            NgramIndex.from_json(ngrams["output"], [entry["suffix"] for entry in entries]),
            meta["thresholds"],
            meta["hold_back"],
            meta["model"],
            protected,
        )

    def identifier_hit(self, text: str, given: str = "") -> tuple[str, dict[str, Any]] | None:
        """The first protected identifier that ``text`` gives away and ``given`` (the request) did not hold, with its
        record — an entry or a protected audited record (None: none). Spaces and dashes inside a number do not hide it
        (identifiers.py)."""
        text, given = compact(text), compact(given)
        for record in (*self.entries, *self.protected):
            for value in record.get("identifiers", ()):
                if value in text and value not in given:
                    return value, record
        return None

    @property
    def longest_identifier(self) -> int:
        records = (*self.entries, *self.protected)
        return max((len(value) for record in records for value in record.get("identifiers", ())), default=0)

    def nearest(self, unit_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarity of each row's closest entry, and that entry's row (-1 with an empty database)."""
        if not self.entries or len(unit_rows) == 0:
            return np.full(len(unit_rows), -1.0, dtype=np.float32), np.full(len(unit_rows), -1, dtype=np.int64)
        scores, rows = self.index.search(np.ascontiguousarray(unit_rows, dtype=np.float32), 1)
        return scores[:, 0], rows[:, 0]


def build_database(config: DatabaseConfig) -> list[Path]:
    import faiss
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    audit_dir = Path(config.audit_dir)
    rows = _audit_rows(audit_dir / "high_risk.jsonl")
    audited = _audit_rows(audit_dir / "audit_results.jsonl")
    pattern = audit_pattern(audit_dir)
    counterparts = secure_counterparts(config)
    unknown = sorted(set(counterparts) - {row["id"] for row in rows})
    if unknown:
        raise DataError(f"{config.secure_responses}: ids not among the high-risk records: {unknown[:5]}.")
    fingerprint = model_content_fingerprint(config.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path).to(device).eval()
    layer = resolve_layer(model, config.layer)
    dimension = model.config.hidden_size
    embed = {"layer": layer, "pooling": config.pooling, "batch_size": config.batch_size}
    center = pooled_states(model, tokenizer, [row["query"] for row in audited], **embed).mean(axis=0)
    index = faiss.IndexFlatIP(dimension)
    if rows:
        index.add(centred_unit_rows(pooled_states(model, tokenizer, [row["query"] for row in rows], **embed), center))
    entries = [
        {
            "id": row["id"],
            "query": row["query"],
            "suffix": row["suffix"],
            "rouge_l": row["rouge_l"],
            "identifiers": record_identifiers(pattern, row["query"], row["suffix"]) if pattern else [],
            "secure_response": counterparts.get(row["id"], config.default_secure_response),
            "secure_response_source": "user" if row["id"] in counterparts else "default",
        }
        for row in rows
    ]
    stored = {entry["id"] for entry in entries}
    protected = [
        {"id": row["id"], "identifiers": found, "secure_response": config.default_secure_response}
        for row in (audited if pattern and config.protect_identifiers == "audited" else [])
        if row["id"] not in stored and (found := record_identifiers(pattern, row["query"], row["suffix"]))
    ]
    lexical = _weighted_index([r["query"] for r in audited], [e["query"] for e in entries], config.lexical_ngram)
    output = _weighted_index(
        [r["suffix"] for r in audited], [e["suffix"] for e in entries], config.output_ngram, config.output_cap
    )
    database = HighRiskDatabase(
        Path(config.output_dir),
        index,
        center,
        entries,
        layer,
        config.pooling,
        dimension,
        lexical,
        output,
        thresholds={
            "embedding": config.embedding_threshold,
            "lexical": config.lexical_threshold,
            "output": config.output_threshold,
        },
        hold_back=0,
        model=fingerprint,
        protected=protected,
    )
    out = Path(config.output_dir)
    written = []
    if config.calibrate and entries:
        from sfmed_lf.privacy.calibrate import calibrate

        written += calibrate(config, database, model, tokenizer, audited_queries={r["query"] for r in audited})
    else:
        database.hold_back = default_hold_back(database)
    meta = {
        "format": FORMAT_VERSION,
        "model": fingerprint,
        "layer": layer,
        "pooling": config.pooling,
        "dimension": dimension,
        "count": len(entries),
        "protected": len(protected),
        "protect_identifiers": config.protect_identifiers,
        "thresholds": database.thresholds,
        "hold_back": database.hold_back,
        "calibrated": bool(config.calibrate and entries),
        "checks": list(CHECKS),
    }
    ngrams = {"lexical": lexical.to_json(), "output": output.to_json()}
    atomic_write_bytes(out / "index.faiss", faiss.serialize_index(index).tobytes())
    atomic_write_npy(out / "center.npy", center)
    atomic_write_text(out / "entries.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    atomic_write_text(out / "protected.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in protected))
    atomic_write_text(out / "ngrams.json", json.dumps(ngrams, ensure_ascii=False) + "\n")
    atomic_write_text(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    thresholds = ", ".join(f"{check} {value}" for check, value in database.thresholds.items())
    print(
        f"high-risk database: {len(entries)} entries ({len(protected)} more audited records' identifiers protected), "
        f"layer {layer}, {config.pooling} pooling; thresholds "
        f"{thresholds}; streamed answers held back {database.hold_back} characters -> {out}"
    )
    return [
        *written,
        *(
            out / name
            for name in ("index.faiss", "center.npy", "entries.jsonl", "protected.jsonl", "ngrams.json", "meta.json")
        ),
    ]


def _weighted_index(background: list[str], stored: list[str], n: int, cap: int | None = None) -> NgramIndex:
    """N-gram index of ``stored``, weighted by IDF over ``background`` (weights kept for the stored n-grams only),
    scored against the weight of an n-gram that one background record alone holds."""
    weights = idf_weights(background, n)
    needed = set().union(*(char_ngrams(text, n) for text in stored)) if stored else set()
    index = NgramIndex(
        n=n,
        weights={gram: weight for gram, weight in weights.items() if gram in needed},
        default_weight=idf(len(background), 0),
        cap=cap,
        reference_weight=idf(len(background), 1),
    )
    for text in stored:
        index.add(text)
    return index


def fire_position(index: NgramIndex, text: str, row: int, threshold: float) -> int | None:
    """How many characters of ``text`` (the memorized suffix of ``row``) an answer reproducing it from its start
    has written when the output check fires; None if it never does."""
    from sfmed_lf.privacy.ngrams import StreamingGrams

    grams = StreamingGrams(index.n)
    matched = [0.0] * len(index.denominators)
    for position, character in enumerate(text, start=1):
        index.add_matches(matched, grams.feed(character))
        if index.scores_of(matched)[row] >= threshold:
            return position
    index.add_matches(matched, grams.finish())
    return len(text) if index.scores_of(matched)[row] >= threshold else None


def default_hold_back(database: HighRiskDatabase) -> int:
    """Characters to hold back in a stream: 1.5 x the latest point at which the output check fires on a verbatim
    reproduction of any memorized suffix, plus one n-gram, so the check fires before any of it is released
    (suffixes too common to ever reach the threshold aside)."""
    threshold = database.thresholds.get("output")
    if threshold is None or not database.entries:
        return 0
    positions = [
        fire_position(database.output, entry["suffix"], row, threshold)
        for row in range(len(database.entries))
        for entry in [database.entries[row]]
    ]
    reachable = [position for position in positions if position is not None]
    return int(1.5 * max(reachable)) + database.output.n if reachable else 0
