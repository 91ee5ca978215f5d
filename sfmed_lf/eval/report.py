"""``report.md`` (tables laid out as SF-Med Tables 3-7), ``report.json`` (every number) and ``report.png``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.eval.config import EvalConfig
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text, read_json
from sfmed_lf.utils.plotting import png_bytes, pyplot

RESULT_FILES = ("rouge", "judge", "mcq")


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _outcome_table(
    title: str, summary: dict[str, Any], scores: tuple[str, str] | None, names: tuple[str, str]
) -> list[str]:
    header = "| Dataset | Win | Tie | Loss | n |"
    if scores:
        header = f"| Dataset | {names[0]} score | {names[1]} score | Win | Tie | Loss | n | unjudged |"
    lines = [f"### {title}: {names[0]} vs {names[1]}", "", header, "|" + "---|" * (header.count("|") - 1)]
    for dataset, row in summary.items():
        rates = f"{_percent(row['win_rate'])} | {_percent(row['tie_rate'])} | {_percent(row['loss_rate'])} | {row['n']}"
        if scores:
            a, b = (row[scores[0]], row[scores[1]])
            shown = " | ".join("–" if v is None else f"{v:.2f}" for v in (a, b))
            lines.append(f"| {dataset} | {shown} | {rates} | {row['unjudged']} |")
        else:
            lines.append(f"| {dataset} | {rates} |")
    return lines


def build_report(config: EvalConfig) -> list[Path]:
    out = Path(config.output_dir)
    results = {
        name: read_json(out / f"{name}.json", f"sfmed eval {name}")
        for name in RESULT_FILES
        if (out / f"{name}.json").exists()
    }
    if not results:
        raise DataError(
            f"{out}: none of {', '.join(f + '.json' for f in RESULT_FILES)}; run rouge, judge or mcq first."
        )
    names = (config.candidate_name, config.baseline_name)
    lines = [f"# Evaluation: {names[0]} vs {names[1]}", ""]
    numbers: dict[str, Any] = {}
    if "rouge" in results:
        rouge = results["rouge"]
        lines += [
            *_outcome_table(
                f"Rouge-L F ({rouge['tokenizer']}, tie margin {rouge['tie_margin']:g})", rouge["summary"], None, names
            ),
            "",
        ]
        numbers["rouge"] = rouge["summary"]
    if "judge" in results:
        judge = results["judge"]
        lines += _outcome_table(
            f"Reference-guided judge ({judge['judge_model']}, 1-10)",
            judge["summary"],
            ("mean_score_a", "mean_score_b"),
            names,
        )
        lines += ["", f"Unparseable judgments: {len(judge['unparseable'])} (listed in judge.json).", ""]
        numbers["judge"] = judge["summary"]
    if "mcq" in results:
        models = results["mcq"]["models"]
        benchmarks = list(next(iter(models.values()))["accuracy"])
        lines += [
            "### Multiple-choice accuracy",
            "",
            "| Model | " + " | ".join(benchmarks) + " |",
            "|---|" + "---|" * len(benchmarks),
        ]
        for model in models.values():
            cells = " | ".join(_percent(model["accuracy"][b]["accuracy"]) for b in benchmarks)
            lines.append(f"| {model['name']} | {cells} |")
        unextracted = {m["name"]: len(m["unextracted"]) for m in models.values()}
        lines += ["", f"Answers with no extractable option (counted wrong): {unextracted}.", ""]
        numbers["mcq"] = {m["name"]: m["accuracy"] for m in models.values()}
    paths = [out / "report.md", out / "report.json", out / "report.png"]
    atomic_write_text(paths[0], "\n".join(lines))
    atomic_write_text(paths[1], json.dumps({"models": names, **numbers}, ensure_ascii=False, indent=2) + "\n")
    atomic_write_bytes(paths[2], _chart(numbers, names))
    return paths


def _label_bars(axis: Any, bars: Any, values: list[float]) -> None:
    """Every bar gets its value, so a 0 % bar is drawn as "0%" rather than left blank."""
    for bar, value in zip(bars, values, strict=True):
        axis.annotate(
            f"{100 * value:.0f}%",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )


def _chart(numbers: dict[str, Any], names: tuple[str, str]) -> bytes:
    plt = pyplot()
    panels = [key for key in ("rouge", "judge", "mcq") if key in numbers]
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.8), squeeze=False)
    for axis, key in zip(axes[0], panels, strict=True):
        if key == "mcq":
            models = list(numbers["mcq"])
            benchmarks = list(numbers["mcq"][models[0]])
            width = 0.8 / len(models)
            for index, model in enumerate(models):
                values = [numbers["mcq"][model][b]["accuracy"] for b in benchmarks]
                bars = axis.bar([i + index * width for i in range(len(benchmarks))], values, width, label=model)
                _label_bars(axis, bars, values)
            counts = [numbers["mcq"][models[0]][b]["n"] for b in benchmarks]
            labels = [f"{b}\n(n = {n})" for b, n in zip(benchmarks, counts, strict=True)]
            axis.set_xticks([i + 0.4 - width / 2 for i in range(len(benchmarks))], labels, rotation=30, ha="right")
            axis.set_ylim(0, 1.1)
            axis.set_title("multiple-choice accuracy", fontsize=9)
            axis.legend(fontsize=8)
            continue
        datasets = list(numbers[key])
        counts = [numbers[key][d]["n"] for d in datasets]
        axis.set_yticks(range(len(datasets)), [f"{d} (n = {n})" for d, n in zip(datasets, counts, strict=True)])
        left = [0.0] * len(datasets)
        for part, colour in (("win", "#2e7d32"), ("tie", "#9e9e9e"), ("loss", "#c62828")):
            values = [numbers[key][d][f"{part}_rate"] for d in datasets]
            axis.barh(range(len(datasets)), values, left=left, color=colour, label=part)
            for row, (start, value) in enumerate(zip(left, values, strict=True)):
                if value >= 0.06:
                    axis.annotate(f"{100 * value:.0f}%", (start + value / 2, row), ha="center", va="center", fontsize=7)
            left = [a + b for a, b in zip(left, values, strict=True)]
        for row, n in enumerate(counts):
            if n == 0:
                axis.annotate("n = 0", (0.5, row), ha="center", va="center", fontsize=8)
        axis.set_xlim(0, 1)
        title = "Rouge-L" if key == "rouge" else "judge"
        axis.set_title(f"{title} win/tie/loss: {names[0]} vs {names[1]}", fontsize=9)
        axis.legend(fontsize=8, loc="lower right")
    return png_bytes(figure)
