"""High-risk embedding database: for every memorized record, the serving model's intermediate embedding of the
record's query (sfmed_lf/privacy/embeddings.py), in a FAISS inner-product index (cosine: rows are unit-norm), with
its metadata and the secure counterpart the guard serves instead of the memorized text.

Files in ``output_dir``: ``index.faiss``, ``center.npy`` (mean pooled state of every audited query, subtracted
before normalising), ``entries.jsonl`` (row i = index vector i), ``meta.json`` (model, layer, pooling, dimension,
count). Each is written atomically, ``meta.json`` last.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sfmed_lf.errors import DataError
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.privacy.config import DatabaseConfig
from sfmed_lf.privacy.embeddings import centred_unit_rows, pooled_states, resolve_layer
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_npy, atomic_write_text, require_file
from sfmed_lf.utils.provenance import model_fingerprint


def secure_counterparts(config: DatabaseConfig) -> dict[str, str]:
    if not config.secure_responses:
        return {}
    require_file(config.secure_responses, "secure_responses")
    counterparts = {}
    for location, row in read_rows(config.secure_responses):
        if not isinstance(row.get("id"), str) or not isinstance(row.get("secure_response"), str):
            raise location.error("needs fields 'id' and 'secure_response' (text).")
        if not row["secure_response"].strip():
            raise location.error("is empty.", "secure_response")
        counterparts[row["id"]] = row["secure_response"].strip()
    return counterparts


def build_database(config: DatabaseConfig) -> list[Path]:
    import faiss
    from transformers import AutoModelForCausalLM, AutoTokenizer

    high_risk_path = Path(config.audit_dir) / "high_risk.jsonl"
    if not high_risk_path.exists():
        raise DataError(f"{high_risk_path} does not exist: run `sfmed privacy audit` first.")
    rows = [row for _, row in read_rows(high_risk_path)]
    audited_queries = [row["query"] for _, row in read_rows(Path(config.audit_dir) / "audit_results.jsonl")]
    counterparts = secure_counterparts(config)
    unknown = sorted(set(counterparts) - {row["id"] for row in rows})
    if unknown:
        raise DataError(f"{config.secure_responses}: ids not among the high-risk records: {unknown[:5]}.")
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(config.model_name_or_path).eval()
    layer = resolve_layer(model, config.layer)
    dimension = model.config.hidden_size
    center = pooled_states(model, tokenizer, audited_queries, layer, config.pooling).mean(axis=0)
    index = faiss.IndexFlatIP(dimension)
    if rows:
        states = pooled_states(model, tokenizer, [row["query"] for row in rows], layer, config.pooling)
        index.add(centred_unit_rows(states, center))
    entries = [
        {
            "id": row["id"],
            "query": row["query"],
            "rouge_l": row["rouge_l"],
            "secure_response": counterparts.get(row["id"], config.default_secure_response),
            "secure_response_source": "user" if row["id"] in counterparts else "default",
        }
        for row in rows
    ]
    out = Path(config.output_dir)
    meta = {
        "model": model_fingerprint(config.model_name_or_path),
        "layer": layer,
        "pooling": config.pooling,
        "dimension": dimension,
        "count": len(entries),
    }
    atomic_write_bytes(out / "index.faiss", faiss.serialize_index(index).tobytes())
    atomic_write_npy(out / "center.npy", center)
    atomic_write_text(out / "entries.jsonl", "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    atomic_write_text(out / "meta.json", json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    print(f"high-risk database: {len(entries)} entries, layer {layer}, {config.pooling} pooling -> {out}")
    return [out / "index.faiss", out / "center.npy", out / "entries.jsonl", out / "meta.json"]


@dataclass
class HighRiskDatabase:
    index: Any
    center: np.ndarray
    entries: list[dict[str, Any]]
    layer: int
    pooling: str
    dimension: int

    @classmethod
    def load(cls, directory: str | Path) -> HighRiskDatabase:
        import faiss

        directory = Path(directory)
        try:
            meta = json.loads((directory / "meta.json").read_text(encoding="utf-8"))
            index = faiss.deserialize_index(np.frombuffer((directory / "index.faiss").read_bytes(), dtype=np.uint8))
            center = np.load(directory / "center.npy")
            entries = [row for _, row in read_rows(directory / "entries.jsonl")]
        except (OSError, ValueError) as error:
            message = f"{directory}: not a high-risk database ({error}); build it with `sfmed privacy build-db`."
            raise DataError(message) from error
        if index.ntotal != len(entries) or meta["count"] != len(entries):
            raise DataError(f"{directory}: index has {index.ntotal} vectors for {len(entries)} entries; rebuild it.")
        return cls(index, center, entries, meta["layer"], meta["pooling"], meta["dimension"])

    def nearest(self, pooled_state: np.ndarray) -> tuple[float, dict[str, Any] | None]:
        """Cosine similarity of the closest entry to a pooled state, and that entry (None for an empty database)."""
        if not self.entries:
            return -1.0, None
        scores, ids = self.index.search(centred_unit_rows(pooled_state.reshape(1, -1), self.center), 1)
        return float(scores[0, 0]), self.entries[int(ids[0, 0])]
