"""``sfmed pref select``: mean preference strength over the reward-model ensemble, flip the weakest, drop the
strongest (:mod:`sfmed_lf.preference.selection`), and write the DPO dataset.

Outputs in ``output_dir``: ``selected.jsonl`` (ranking rows, flipped pairs with chosen and rejected swapped) and
its ``dataset_info.json`` entry (also added to ``register_in``, e.g. the project's dataset_info.json, so
``dataset: NAME`` works in the DPO YAML and LLaMA-Board lists it); ``audit.jsonl`` (per pair: key, every model's
scores, mean, std, action); ``selection_report.json`` with per-decile statistics; ``strength_histogram.png``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sfmed_lf.errors import DataError
from sfmed_lf.formats.lf_rows import to_ranking_row
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.preference.pairs import SCORE_FIELDS, load_pairs, register_pairs, step_output
from sfmed_lf.preference.selection import DROP, FLIP, select_actions, strengths
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text
from sfmed_lf.utils.plotting import png_bytes, pyplot


def decile_statistics(mean: np.ndarray) -> list[dict[str, float]]:
    order = np.sort(mean)
    rows = []
    for index, chunk in enumerate(np.array_split(order, 10)):
        if len(chunk):
            rows.append(
                {
                    "decile": index + 1,
                    "pairs": len(chunk),
                    "min": float(chunk.min()),
                    "mean": float(chunk.mean()),
                    "max": float(chunk.max()),
                }
            )
    return rows


def select_pairs(config: PreferenceConfig) -> list[Path]:
    out = config.out
    pairs = load_pairs(*config.pairs_source())
    scores_path = out / "scores.jsonl"
    models = sorted(step_output(scores_path, "score", SCORE_FIELDS), key=lambda row: row["model"])
    indices = [model["model"] for model in models]
    if len(set(indices)) != len(indices):
        raise DataError(f"{scores_path}: model(s) {sorted({i for i in indices if indices.count(i) > 1})} scored twice.")
    if len(models) < config.num_reward_models:
        raise DataError(f"{scores_path}: {len(models)} of {config.num_reward_models} models scored.")
    chosen = np.zeros((len(pairs), len(models)))
    rejected = np.zeros((len(pairs), len(models)))
    for column, model in enumerate(models):
        for row, pair in enumerate(pairs):
            found = model["scores"].get(pair.key)
            if found is None:
                raise DataError(
                    f"{scores_path}: no score of model {model['model']} for pair {pair.id!r}: the pairs changed "
                    "since they were scored; re-run `sfmed pref score` (with a new output_dir or without scores.jsonl)."
                )
            chosen[row, column], rejected[row, column] = found
    mean, std = strengths(chosen, rejected)
    actions = select_actions(mean, config.flip_fraction, config.drop_fraction, config.flip_below, config.drop_above)

    selected, audit = [], []
    for index, (pair, action) in enumerate(zip(pairs, actions, strict=True)):
        audit.append(
            {
                "id": pair.id,
                "key": pair.key,
                "chosen_scores": chosen[index].tolist(),
                "rejected_scores": rejected[index].tolist(),
                "mean_strength": float(mean[index]),
                "std_strength": float(std[index]),
                "action": action,
            }
        )
        if action != DROP:
            selected.append(to_ranking_row(pair.flipped() if action == FLIP else pair))

    counts = {name: actions.count(name) for name in ("keep", FLIP, DROP)}
    report = {
        "pairs": len(pairs),
        "reward_models": len(models),
        "rule": {
            "flip_fraction": config.flip_fraction,
            "drop_fraction": config.drop_fraction,
            "flip_below": config.flip_below,
            "drop_above": config.drop_above,
        },
        "actions": counts,
        "mean_strength": {"mean": float(mean.mean()), "std": float(mean.std())},
        "mean_model_disagreement": float(std.mean()),
        "deciles": decile_statistics(mean),
        "dataset": config.dataset_name,
    }
    written = [out / "selected.jsonl", out / "audit.jsonl", out / "selection_report.json"]
    atomic_write_text(written[0], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in selected))
    atomic_write_text(written[1], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in audit))
    atomic_write_text(written[2], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    written.append(out / "strength_histogram.png")
    atomic_write_bytes(written[-1], _histogram(mean, actions, config))
    register_pairs(out / "dataset_info.json", config.dataset_name, "selected.jsonl")
    if config.register_in:
        target = Path(config.register_in)
        relative = os.path.relpath(out.resolve() / "selected.jsonl", target.resolve().parent)
        register_pairs(target, config.dataset_name, Path(relative).as_posix())
        written.append(target)
    return written


def _histogram(mean: np.ndarray, actions: list[str], config: PreferenceConfig) -> bytes:
    """The strength of every pair, coloured by what selection did, with the flip and drop thresholds marked."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 3.8))
    bins = np.histogram_bin_edges(mean, bins=min(40, max(10, len(mean) // 5)))
    for action, color in (("keep", "tab:blue"), (FLIP, "tab:red"), (DROP, "tab:gray")):
        values = [m for m, a in zip(mean, actions, strict=True) if a == action]
        axis.hist(values, bins=bins, color=color, alpha=0.8, label=f"{action} ({len(values)})")
    for action, edge, side in ((FLIP, max, "flip below"), (DROP, min, "drop above")):
        chosen = [m for m, a in zip(mean, actions, strict=True) if a == action]
        if chosen:
            threshold = edge(chosen)
            axis.axvline(threshold, color="black", linestyle="--", linewidth=1)
            axis.annotate(
                f"{side} {threshold:.2f}",
                (threshold, axis.get_ylim()[1] * 0.92),
                fontsize=7,
                rotation=90,
                ha="right",
                va="top",
            )
    rule = (
        (f"flip_below {config.flip_below:g}" if config.flip_below is not None else f"flip {config.flip_fraction:.0%}")
        + ", "
        + (f"drop_above {config.drop_above:g}" if config.drop_above is not None else f"drop {config.drop_fraction:.0%}")
    )
    axis.set_title(f"preference strength of {len(mean)} pairs over the reward models ({rule})", fontsize=9)
    axis.set_xlabel("mean preference strength (chosen − rejected), over the reward models")
    axis.set_ylabel("pairs")
    axis.legend(fontsize=8)
    return png_bytes(figure)
