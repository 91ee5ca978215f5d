"""The preference-pair files of ``sfmed pref``: LLaMA-Factory ranking rows (``instruction``, ``input``,
``history``, ``system``, ``chosen``, ``rejected``), their dataset_info entry, the prompt as LF's ranking loader reads
it, and the identity of a pair by its texts. Kept free of heavy imports: the loader plugin imports it in every
``llamafactory-cli train``."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_write_text
from sfmed_lf.utils.jsonl import read_records

RANKING_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "chosen": "chosen",
    "rejected": "rejected",
    "history": "history",
    "system": "system",
}


def register(info_path: Path, name: str, file_name: str) -> None:
    """Add (or replace) a ranking entry in a dataset_info.json, keeping its other entries."""
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    info[name] = {"file_name": file_name, "ranking": True, "columns": RANKING_COLUMNS}
    atomic_write_text(info_path, json.dumps(info, ensure_ascii=False, indent=2) + "\n")


def prompt_messages(pair: dict[str, Any]) -> list[dict[str, str]]:
    """History turns, then the question (instruction + input), as LF's alpaca ranking converter builds them."""
    messages = []
    for question, answer in pair.get("history") or []:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    question = pair["instruction"] + (f"\n{pair['input']}" if pair.get("input") else "")
    return [*messages, {"role": "user", "content": question}]


def pair_key(prompt: list[str], chosen: str, rejected: str) -> str:
    """Identity of a pair by its texts (system, then the prompt's turns in order), so a loader can find it again."""
    payload = json.dumps([prompt, chosen, rejected], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def row_key(pair: dict[str, Any]) -> str:
    turns = [pair.get("system") or "", *(message["content"] for message in prompt_messages(pair))]
    return pair_key(turns, pair["chosen"], pair["rejected"])


def step_output(path: Path, producer: str) -> list[dict[str, Any]]:
    """Rows another ``sfmed pref`` step wrote; missing or empty names the step to run first."""
    rows = [row for _, row in read_records(path)] if path.exists() else []
    if not rows:
        raise DataError(f"{path}: missing or empty; run `sfmed pref {producer}` first.")
    return rows
