"""``sfmed data attach-system``: the diversified instructions become the system prompts of SFT samples
(SF-Med §3.2): single-turn rows draw from the single-turn pool (answer directly), rows with earlier turns from the
multi-turn pool (may ask follow-up questions, never repeat one).

The instruction of a row is drawn from ``Random(f"{seed}-{dataset}-{row}")``, so it depends neither on the order of
processing nor on the other rows. Output: one file per dataset (same format, ``system`` set) and a
``dataset_info.json`` in ``output_dir`` with a ``<name>_diversified`` entry each (the source entry plus a system
column), so ``dataset_dir: OUTPUT_DIR`` and ``dataset: <name>_diversified`` train on them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.data_prep.config import AttachConfig
from sfmed_lf.data_prep.diversify import load_instructions
from sfmed_lf.data_prep.registry import local_dataset_entry
from sfmed_lf.errors import DataError
from sfmed_lf.utils.io import atomic_open, atomic_write_text
from sfmed_lf.utils.jsonl import read_records


def _entry(config: AttachConfig, name: str) -> dict[str, Any]:
    hint = "system prompts are attached to local files; download it and register file_name."
    info_path, entry = local_dataset_entry(config.dataset_dir, name, hint)
    if entry.get("ranking"):
        raise DataError(f"{info_path}: {name} is a ranking dataset; system prompts are attached to SFT data.")
    return entry


def is_multi_turn(row: dict[str, Any], entry: dict[str, Any]) -> bool:
    columns = entry.get("columns", {})
    if entry.get("formatting") == "sharegpt":
        messages = row.get(columns.get("messages", "conversations")) or []
        user_tag = entry.get("tags", {}).get("user_tag", "human")
        role_tag = entry.get("tags", {}).get("role_tag", "from")
        return sum(1 for message in messages if message.get(role_tag) == user_tag) > 1
    return bool(row.get(columns.get("history", "history")))


def attach_system_prompts(config: AttachConfig) -> list[Path]:
    pools = {"single": load_instructions(config.single_pool), "multi": load_instructions(config.multi_pool)}
    out = Path(config.output_dir)
    new_info: dict[str, Any] = {}
    report: dict[str, Any] = {}
    written = []
    for name in config.datasets:
        entry = _entry(config, name)
        source = Path(config.dataset_dir) / entry["file_name"]
        if config.input_dir:
            source = Path(config.input_dir) / source.name
        if not source.is_file():
            raise DataError(f"{source}: no such file (dataset {name}).")
        system_column = entry.get("columns", {}).get("system", "system")
        counts = {"single": 0, "multi": 0, "kept_existing": 0}
        target = out / f"{name}_diversified.jsonl"
        with atomic_open(target) as handle:
            for number, row in tqdm(read_records(source), desc=f"attach {name}", unit="row", mininterval=1.0):
                if config.keep_existing and str(row.get(system_column) or "").strip():
                    counts["kept_existing"] += 1
                else:
                    pool = "multi" if is_multi_turn(row, entry) else "single"
                    row[system_column] = random.Random(f"{config.seed}-{name}-{number}").choice(pools[pool])
                    counts[pool] += 1
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        columns = {**entry.get("columns", {}), "system": system_column}
        new_info[f"{name}_diversified"] = {**entry, "file_name": target.name, "columns": columns}
        report[name] = counts
        written.append(target)
    written += [out / "dataset_info.json", out / "attach_report.json"]
    atomic_write_text(written[-2], json.dumps(new_info, ensure_ascii=False, indent=2) + "\n")
    pool_sizes = {pool: len(instructions) for pool, instructions in pools.items()}
    atomic_write_text(written[-1], json.dumps({"pools": pool_sizes, "datasets": report}, indent=2) + "\n")
    return written
