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
from sfmed_lf.errors import DataError
from sfmed_lf.formats.dataset_names import DIVERSIFIED_SUFFIX
from sfmed_lf.formats.datasets import LocalDataset, local_dataset
from sfmed_lf.formats.lf_rows import Conversation
from sfmed_lf.utils.io import atomic_open, atomic_write_text


def _dataset(config: AttachConfig, name: str) -> LocalDataset:
    dataset = local_dataset(config.dataset_dir, name)
    if dataset.entry.kind != "sft":
        raise DataError(
            f"datasets: {dataset.info_path}: {name} is {dataset.entry.kind} data; system prompts are "
            "attached to SFT conversations."
        )
    return dataset


def attach_system_prompts(config: AttachConfig) -> list[Path]:
    pools = {
        "single": load_instructions(config.single_pool, "single_pool"),
        "multi": load_instructions(config.multi_pool, "multi_pool"),
    }
    out = Path(config.output_dir)
    new_info: dict[str, Any] = {}
    report: dict[str, Any] = {}
    written = []
    for name in config.datasets:
        dataset = _dataset(config, name)
        entry = dataset.entry
        system_column = entry.columns.get("system", "system")
        counts = {"single": 0, "multi": 0, "kept_existing": 0}
        target = out / f"{name}{DIVERSIFIED_SUFFIX}.jsonl"
        with atomic_open(target) as handle:
            records = tqdm(dataset.records(), desc=f"attach {name}", unit="row", mininterval=1.0)
            for location, row, conversation in records:
                assert isinstance(conversation, Conversation)
                if config.keep_existing and conversation.system.strip():
                    counts["kept_existing"] += 1
                else:
                    pool = "multi" if conversation.multi_turn else "single"
                    row[system_column] = random.Random(f"{config.seed}-{name}-{location.row}").choice(pools[pool])
                    counts[pool] += 1
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            if not sum(counts.values()):  # raised inside the block: nothing is written
                raise DataError(f"datasets: {name} holds no rows.")
        columns = {**entry.columns, "system": system_column}
        new_info[f"{name}{DIVERSIFIED_SUFFIX}"] = {**entry.raw, "file_name": target.name, "columns": columns}
        report[name] = counts
        written.append(target)
    written += [out / "dataset_info.json", out / "attach_report.json"]
    atomic_write_text(written[-2], json.dumps(new_info, ensure_ascii=False, indent=2) + "\n")
    pool_sizes = {pool: len(instructions) for pool, instructions in pools.items()}
    atomic_write_text(written[-1], json.dumps({"pools": pool_sizes, "datasets": report}, indent=2) + "\n")
    return written
