"""Where a model's generative answers to the world's exam items go wrong (issue 13's held-out exam).

    python scripts/exam_diagnosis.py saves/tiny [--answers eval/sft_vs_pt/answers/a.jsonl]

The world's answer form states the fact first and then the letters ("X的一线治疗药物是Y。答案：B"). For each dataset
of ``world/eval_mcq.jsonl`` this counts the items answered (n), answered right (by ``sfmed eval``'s extraction),
whose statement names the asked condition (diagnosis items name it as their answer, so they are not counted), whose
statement holds exactly the gold options' texts, and whose letters agree with the options the statement holds.
It reads what ``sfmed eval`` wrote; it generates nothing.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from sfmed_lf.eval.mcq import extract_choice, is_correct
from sfmed_lf.formats.items import EvalItem, load_items
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.world.phrasing import EXAM_ANSWER_MARK

COUNTS = ("n", "right", "names_condition", "states_gold_options", "letters_agree_with_statement")


def diagnose(items: list[EvalItem], answers: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per dataset, the counts of :data:`COUNTS` over the exam items that have an answer."""
    counts: dict[str, Counter[str]] = {}
    for item in items:
        exam = item.exam
        if exam is None or item.id not in answers:
            continue
        answer = answers[item.id]
        statement, _, letters = answer.partition(EXAM_ANSWER_MARK)
        stated = {letter for letter, text in exam.options.items() if text in statement}
        count = counts.setdefault(item.dataset, Counter())
        count["n"] += 1
        count["right"] += is_correct(
            extract_choice(answer, dict(exam.options), exam.multi_answer), exam.answer, exam.multi_answer
        )
        if item.metadata["kind"] != "exam:diagnosis":
            count["names_condition"] += item.metadata["condition"] in statement
        count["states_gold_options"] += stated == set(exam.answer)
        count["letters_agree_with_statement"] += bool(stated) and set(letters.strip().rstrip("。")) == stated
    return {dataset: {name: count[name] for name in COUNTS} for dataset, count in counts.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("saves", type=Path, help="the demo's saves/tiny")
    parser.add_argument("--answers", default="eval/sft_vs_pt/answers/a.jsonl", help="answers, relative to saves")
    args = parser.parse_args(argv)
    items = load_items(args.saves / "world" / "eval_mcq.jsonl")
    answers = {row["id"]: row["response"] for _, row in read_rows(args.saves / args.answers)}
    for dataset, counts in diagnose(items, answers).items():
        print(dataset, " ".join(f"{name}={value}" for name, value in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
