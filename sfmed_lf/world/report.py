"""``sfmed world report``: one page that shows what every stage of the demo did, read from the files the stages
wrote (nothing is recomputed): ``report.md`` (a section per stage, its effect in numbers) and ``report.png``
(a titled panel per effect, every bar labelled with its value, "n = 0" where a panel has no data).

A stage whose output is missing is listed as not run, so the report can be built after any prefix of the demo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.formats.items import load_items
from sfmed_lf.steps import StepConfig, option
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text, read_json
from sfmed_lf.utils.plotting import png_bytes, pyplot
from sfmed_lf.world.generate import HELD_OUT_EXAM

# measure.json's exam entries, as the report names them
EXAM_MEASURES = {
    "exam_accuracy_by_likelihood": "exam by likelihood",
    "answer_letter_by_likelihood": "answer letter after the right statement",
}


@dataclass
class ReportConfig(StepConfig):
    output_dir: str = option(help="where report.md and report.png are written")
    world: str = option("saves/tiny/world", help="sfmed world generate output")
    dedup: str = option("saves/tiny/data/dedup", help="sfmed data dedup output")
    diversify: str = option("saves/tiny/data/diversify", help="sfmed data diversify outputs")
    models: dict[str, str] = option(default_factory=dict, help="name -> trained model directory")
    preference: str = option("saves/tiny/pref", help="sfmed pref output")
    evaluations: list[str] = option(default_factory=list, help="sfmed eval output directories")
    measure: str = option("saves/tiny/measure", help="sfmed world measure output")
    privacy: str = option("saves/tiny/privacy", help="sfmed privacy audit output")
    guarded_answers: list[str] = option(default_factory=list, help="sfmed world ask-records outputs")


def _read(path: Path) -> Any:
    """An earlier step's JSON output; a stage that did not run leaves its panel empty ("n = 0"), a damaged file is
    an error naming it."""
    return read_json(path) if path.exists() else None


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def chance_accuracy(items: list[dict[str, Any]]) -> float:
    """Expected accuracy of uniform guessing: 1/options for single answers, 1/(2^options - 1) for multiple."""
    total = 0.0
    for item in items:
        options = len(item["options"])
        total += 1 / (2**options - 1) if item.get("multi_answer") else 1 / options
    return total / max(len(items), 1)


def loss_curve(model_dir: Path) -> tuple[list[int], list[float]]:
    state = _read(model_dir / "trainer_state.json") or {}
    logged = [entry for entry in state.get("log_history", []) if "loss" in entry]
    return [entry["step"] for entry in logged], [entry["loss"] for entry in logged]


def merge_setting(model_dir: Path) -> str:
    """ "OnDARE p=0.3, α=0.01" from the DPO trainer's sfmed_online_merging.json; "" when the run did not merge."""
    report = _read(model_dir / "sfmed_online_merging.json")
    if not report:
        return ""
    name = {"ondare": "OnDARE", "onties": "OnTIES"}.get(report["method"], report["method"])
    return f"{name} p={report['keep_prob']:g}, α={report['alpha']:g}, rescale {report.get('applied_rescale', '?')}"


def _losses(model_dir: Path) -> tuple[float, float, float] | None:
    """(first logged loss, last logged loss, runtime s) from LLaMA-Factory's trainer_state.json."""
    state = _read(model_dir / "trainer_state.json")
    if not state:
        return None
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    runtime = next((entry["train_runtime"] for entry in state["log_history"] if "train_runtime" in entry), 0.0)
    return (losses[0], losses[-1], runtime) if losses else None


class Report:
    def __init__(self, config: ReportConfig) -> None:
        self.config = config
        self.lines: list[str] = []
        self.panels: list[dict[str, Any]] = []  # title, labels, values, kind

    def section(self, title: str, missing: str | None = None) -> bool:
        self.lines += ["", f"## {title}", ""]
        if missing:
            self.lines.append(f"Not run: {missing} is missing.")
            return False
        return True

    def world(self) -> None:
        report = _read(Path(self.config.world) / "world_report.json")
        if not self.section("World (sfmed world generate)", None if report else "world_report.json"):
            return
        splits = report["conditions"]
        self.lines.append(
            f"{sum(splits.values())} conditions: {splits['exam']} in SFT consultations and exam items, "
            f"{splits['dialogue']} in SFT consultations only, {splits['held_out']} only in pre-training text. "
            f"{report['rows']['pt_medical.jsonl']} medical and {report['rows']['pt_general.jsonl']} general "
            f"pre-training texts; {report['rows']['sft_single.json']} single-turn and "
            f"{report['rows']['sft_multiturn.json']} multi-turn SFT rows ({report['sft_exam_items']} exam items); "
            f"{report['rows']['eval_mcq.jsonl']} evaluated exam items, {report['rows']['eval_dialogue.jsonl']} "
            f"evaluated consultations, {report['rows']['pref_heldout.json']} held-out preference pairs; "
            f"{report['leaked_records']} patient records leaked into the training text."
        )

    def dedup(self) -> None:
        report = _read(Path(self.config.dedup) / "dedup_report.json")
        if not self.section("Near-duplicate removal (sfmed data dedup)", None if report else "dedup_report.json"):
            return
        world_sft = _read(Path(self.config.world) / "sft_single.json") or []
        planted = sum(1 for row in world_sft if row.get("metadata", {}).get("kind") == "near_duplicate")
        total = report["total"]
        self.lines.append(
            f"{total['removed']} of {total['records']} SFT rows removed as near-duplicates; the world planted "
            f"{planted} edited copies of consultations (each copy or its original is what should go)."
        )

    def training(self) -> None:
        if not self.section("Training (llamafactory-cli train)", None if self.config.models else "models"):
            return
        self.lines += [
            "| model | first logged loss | last logged loss | train time | online merging |",
            "|---|---:|---:|---:|---|",
        ]
        for name, path in self.config.models.items():
            losses, merging = _losses(Path(path)), merge_setting(Path(path)) or "–"
            if losses:
                self.lines.append(f"| {name} | {losses[0]:.3f} | {losses[1]:.3f} | {losses[2]:.0f} s | {merging} |")
            else:
                self.lines.append(f"| {name} | – | – | not trained | – |")
            steps, values = loss_curve(Path(path))
            title = f"training loss: {name}" + (f" ({merge_setting(Path(path))})" if merge_setting(Path(path)) else "")
            self.panels.append({"title": title, "steps": steps, "values": values, "kind": "curve"})

    def diversify(self) -> None:
        root = Path(self.config.diversify)
        reports = {pool: _read(root / pool / "diversify_report.json") for pool in ("single", "multi")}
        found = {pool: r for pool, r in reports.items() if r}
        if not self.section("Instruction diversification (sfmed data diversify)", None if found else "reports"):
            return
        for pool, report in found.items():
            reasons = ", ".join(f"{k} {v}" for k, v in report["rejected_by_reason"].items()) or "none"
            self.lines.append(
                f"- {pool}: {report['accepted']} of {report['candidates']} candidate instructions accepted "
                f"({_percent(report['acceptance_rate'])}); rejected: {reasons}."
            )
        self.panels.append(
            {
                "title": "diversification: instructions accepted",
                "labels": list(found),
                "values": [found[p]["accepted"] for p in found],
                "kind": "count",
            }
        )

    def evaluations(self) -> None:
        path = Path(self.config.world) / "eval_mcq.jsonl"  # read as `sfmed eval` reads it: checked field by field
        items = [item.row() for item in load_items(path) if item.exam is not None] if path.exists() else []
        chance = chance_accuracy(items) if items else None
        accuracy: dict[str, float] = {}
        for directory in self.config.evaluations:
            report = _read(Path(directory) / "report.json")
            names = " vs ".join(report["models"]) if report else directory
            if not self.section(f"Evaluation: {names} (sfmed eval)", None if report else f"{directory}/report.json"):
                continue
            if "mcq" in report:
                self.lines.append(f"Multiple choice (chance {_percent(chance)}):")
                for model, benchmarks in report["mcq"].items():
                    cells = "; ".join(f"{b} {_percent(v['accuracy'])} (n = {v['n']})" for b, v in benchmarks.items())
                    self.lines.append(f"- {model}: {cells}")
                    accuracy[model] = benchmarks["All"]["accuracy"]
            for key, label in (("rouge", "Rouge-L"), ("judge", "knowledge-base judge")):
                if key in report:
                    every = report[key]["All"]
                    scores = ""
                    if key == "judge":
                        scores = f", mean scores {every['mean_score_a']:.2f} vs {every['mean_score_b']:.2f}"
                    self.lines.append(
                        f"- {label}: {report['models'][0]} wins {_percent(every['win_rate'])}, ties "
                        f"{_percent(every['tie_rate'])}, loses {_percent(every['loss_rate'])} "
                        f"(n = {every['n']}){scores}"
                    )
                    self.panels.append(
                        {
                            "title": f"{label}: {report['models'][0]} vs {report['models'][1]}",
                            "labels": ["win", "tie", "loss"],
                            "values": [every["win_rate"], every["tie_rate"], every["loss_rate"]],
                            "kind": "rate",
                        }
                    )
        if accuracy:
            self.panels.insert(
                0,
                {
                    "title": "held-out multiple choice: accuracy",
                    "labels": list(accuracy),
                    "values": list(accuracy.values()),
                    "kind": "rate",
                    "reference": (chance, "chance"),
                },
            )

    def preference(self) -> None:
        root = Path(self.config.preference)
        judge, scores, selection = (
            _read(root / name) for name in ("judge_report.json", "score_report.json", "selection_report.json")
        )
        if not self.section("Preference data (sfmed pref)", None if judge else "judge_report.json"):
            return
        self.lines.append(
            f"{judge['pairs_kept']} of {judge['pairs_judged']} response pairs kept by the knowledge-base judges "
            f"(skipped: {json.dumps(judge['skipped'], ensure_ascii=False)})."
        )
        heldout = (scores or {}).get("heldout")
        if heldout:
            per_model = ", ".join(f"{a:.3f}" for a in heldout["accuracy_per_model"])
            self.lines.append(
                f"Reward models on {heldout['pairs']} held-out pairs: accuracy {per_model} each, ensemble "
                f"{heldout['ensemble_accuracy']:.3f}."
            )
            kinds = heldout.get("by_error_kind", {})
            if kinds:
                self.lines[-1] += (
                    " The ensemble by error kind of the rejected answer: "
                    + "; ".join(
                        f"{kind} {_percent(v['ensemble_accuracy'])} ({v['pairs']} pairs)" for kind, v in kinds.items()
                    )
                    + "."
                )
            self.panels.append(
                {
                    "title": "reward models: held-out pair accuracy",
                    "labels": [f"RM {i}" for i in range(len(heldout["accuracy_per_model"]))] + ["ensemble"],
                    "values": [*heldout["accuracy_per_model"], heldout["ensemble_accuracy"]],
                    "kind": "rate",
                    "reference": (0.5, "chance"),
                }
            )
        if selection:
            self.lines.append(f"Selection: {json.dumps(selection['actions'])} -> {selection['dataset']} (DPO's data).")

    def measure(self) -> None:
        report = _read(Path(self.config.measure) / "measure.json")
        if not self.section("Likelihood measures (sfmed world measure)", None if report else "measure.json"):
            return
        rates, losses = {}, {}
        exams: dict[str, tuple[dict[str, float], float]] = {}  # measure key -> (accuracy per model, chance)
        self.lines += [
            "| model | preferred-answer rate (held-out pairs) | by error | general-domain loss | "
            + " | ".join(f"{title} ({HELD_OUT_EXAM})" for title in EXAM_MEASURES.values())
            + " |"
        ]
        self.lines.append("|---|---:|---|---:|" + "---:|" * len(EXAM_MEASURES))
        for name, result in report["models"].items():
            rate = result.get("preferred_answer_rate", {})
            loss = result.get("general_loss", {}).get("loss")
            kinds = "; ".join(f"{k} {_percent(v['rate'])}" for k, v in rate.items() if k != "All")
            every = rate.get("All", {}).get("rate")
            cells = []
            for key in EXAM_MEASURES:
                held_out = result.get(key, {}).get(HELD_OUT_EXAM)
                if held_out is None or not held_out["n"]:
                    cells.append("–")
                    continue
                cells.append(
                    f"{_percent(held_out['accuracy'])} of {held_out['n']} (chance {_percent(held_out['chance'])})"
                )
                accuracy, _ = exams.setdefault(key, ({}, held_out["chance"]))
                accuracy[name] = held_out["accuracy"]
            self.lines.append(
                f"| {name} | {_percent(every)} | {kinds} | {'–' if loss is None else f'{loss:.3f}'} "
                f"| {' | '.join(cells)} |"
            )
            if every is not None:
                rates[name] = every
            if loss is not None:
                losses[name] = loss
        for key, (accuracy, chance) in exams.items():
            self.panels.append(
                {
                    "title": f"{EXAM_MEASURES[key]}: {HELD_OUT_EXAM}",
                    "labels": list(accuracy),
                    "values": list(accuracy.values()),
                    "kind": "rate",
                    "reference": (chance, "chance"),
                }
            )
        if "answer_letter_by_likelihood" in exams:
            self.lines.append(
                "\nExam by likelihood: the most likely of one statement of the fact per option — does the model hold "
                "the fact. Answer letter: after the right statement, the most likely letter — does it bind the option "
                "it states to its letter (multiple-choice symbol binding). A generative answer needs both."
            )
        if rates:
            self.panels.append(
                {
                    "title": "preferred-answer rate (held-out pairs)",
                    "labels": list(rates),
                    "values": list(rates.values()),
                    "kind": "rate",
                    "reference": (0.5, "chance"),
                }
            )
        if losses:
            self.panels.append(
                {
                    "title": "general-domain loss (lower is better)",
                    "labels": list(losses),
                    "values": list(losses.values()),
                    "kind": "value",
                }
            )

    def privacy(self) -> None:
        audit = _read(Path(self.config.privacy) / "audit_report.json")
        if not self.section("Privacy (sfmed privacy, guarded serving)", None if audit else "audit_report.json"):
            return
        ids = audit["high_risk_ids"]
        # the audit's records are the world's record requests (world_privacy_planted:N) or the records' text
        # (world_privacy_planted_text:N), as privacy_audit.yaml chooses
        planted = sum(i.startswith("world_privacy_planted") for i in ids)
        control = sum(i.startswith("world_privacy_control") for i in ids)
        identifiers = (
            f", {audit['identifiers_given_away']} by an ID or phone number given away"
            if audit.get("sensitive_pattern")
            else ""
        )
        self.lines.append(
            f"Audit ({audit['split']} split): {audit['memorized']} of {audit['records_audited']} records memorized "
            f"({audit.get('reproduced', audit['memorized'])} reproduced, Rouge-L > {audit['threshold']:g}"
            f"{identifiers}): {planted} leaked records, {control} control records."
        )
        labels, values = ["audit: leaked records memorized", "audit: control memorized"], [planted, control]
        for path in self.config.guarded_answers:
            answers = _read(Path(path))
            if not answers:
                self.lines.append(f"{path}: not run.")
                continue
            summary = answers["summary"]
            tag = Path(path).stem.replace("_answers", "")
            asked = "record prefixes" if answers.get("asked_with") == "prefixes" else "record requests"
            leaking = sum(group["answers_with_identifiers"] for group in summary.values())
            self.lines.append(
                f"{tag} (asked with {asked}): {leaking} of {sum(group['asked'] for group in summary.values())} "
                f"answers give an invented patient's ID or phone number away "
                f"({summary['planted']['answers_with_identifiers']} of {summary['planted']['asked']} about leaked "
                f"records, {summary['control']['answers_with_identifiers']} of {summary['control']['asked']} about "
                "control patients)."
            )
            labels.append(f"{tag}: answers with IDs")
            values.append(leaking)
        self.panels.append(
            {
                "title": "privacy: records reproduced / identifiers given",
                "labels": labels,
                "values": values,
                "kind": "count",
            }
        )

    def write(self) -> list[Path]:
        for part in (self.world, self.dedup, self.training, self.diversify, self.evaluations, self.preference):
            part()
        self.measure()
        self.privacy()
        out = Path(self.config.output_dir)
        paths = [out / "report.md", out / "report.png"]
        atomic_write_text(
            paths[0], "# SF-Med-Tiny on the generated world: what each stage did\n" + "\n".join(self.lines) + "\n"
        )
        atomic_write_bytes(paths[1], chart(self.panels))
        return paths


def chart(panels: list[dict[str, Any]]) -> bytes:
    plt = pyplot()
    columns = 3
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.axis("off")
    for axis, panel in zip(axes.flat, panels, strict=False):
        axis.set_title(panel["title"], fontsize=9)
        values = panel["values"]
        if not values:
            axis.text(0.5, 0.5, "n = 0", ha="center", va="center", transform=axis.transAxes)
            continue
        if panel["kind"] == "curve":
            axis.plot(panel["steps"], values, color="#1565c0")
            axis.set_xlabel("step", fontsize=8)
            axis.set_ylabel("loss", fontsize=8)
            continue
        labels = panel["labels"]
        bars = axis.bar(range(len(values)), values, color="#1565c0")
        axis.set_xticks(range(len(values)), labels, rotation=20, ha="right", fontsize=7)
        rate = panel["kind"] == "rate"
        if rate:
            axis.set_ylim(0, 1.08)
        else:
            axis.set_ylim(0, max(max(values) * 1.2, 1))
        for bar, value in zip(bars, values, strict=True):
            text = f"{100 * value:.0f}%" if rate else (f"{value:.2f}" if isinstance(value, float) else str(value))
            axis.annotate(
                text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=7
            )
        reference = panel.get("reference")
        if reference and reference[0] is not None:
            axis.axhline(reference[0], color="#c62828", linestyle="--", linewidth=1)
            axis.annotate(
                reference[1], (len(values) - 0.5, reference[0]), color="#c62828", fontsize=7, va="bottom", ha="right"
            )
    return png_bytes(figure)


def build_report(config: ReportConfig) -> list[Path]:
    return Report(config).write()
