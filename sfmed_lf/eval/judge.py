"""Reference-guided single-answer grading (SF-Med §4.3; Zheng et al. 2023, "Judging LLM-as-a-Judge", §3.1).

Each answer is scored alone, 1-10, with the reference answer in the prompt, so the judge never sees two answers side
by side and has no position to prefer. Score parsing, first rule that matches decides:

1. ``[[7]]`` or ``[[7.5]]`` (the format the prompt asks for);
2. 评分/分数/得分/打分/Rating/Score followed by ``:``/``：``/``为``/``是`` and a number;
3. ``7/10`` or ``7 / 10``;
4. ``7分`` (not preceded by another digit).

All matches of the deciding rule must agree, and the score must lie in [1, 10]; otherwise the judgment is
*unparseable*, counted and reported, and the item is left out of that comparison. A score is never guessed.
"""

from __future__ import annotations

import re

from sfmed_lf.formats.conversation import Prompt

JUDGE_SYSTEM = "你是一名严谨的医学专家评审。"
JUDGE_PROMPT = (
    "请以参考答案为依据，评价AI医生对患者问题的回答质量，考虑医学准确性、有用性、完整性和安全性。"
    "先给出简短的评价理由，最后严格按照“评分：[[X]]”的格式给出1到10之间的分数。\n\n"
    "{history}[患者问题]\n{question}\n\n[参考答案]\n{reference}\n\n[AI医生的回答]\n{answer}"
)
_NUMBER = r"(\d+(?:\.\d+)?)"
SCORE_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("double brackets", re.compile(r"\[\[\s*" + _NUMBER + r"\s*\]\]")),
    ("labelled score", re.compile(r"(?:评分|分数|得分|打分|rating|score)\s*(?:[:：为是]|is)\s*\[?\s*" + _NUMBER, re.I)),
    ("out of ten", re.compile(_NUMBER + r"\s*/\s*10(?!\d)")),
    ("fen", re.compile(r"(?<![\d.])" + _NUMBER + r"\s*分")),
)


def judge_messages(prompt: Prompt, reference: str, answer: str) -> list[dict[str, str]]:
    past = "".join(f"[对话历史·患者]\n{q}\n[对话历史·医生]\n{a}\n\n" for q, a in prompt.history)
    request = JUDGE_PROMPT.format(history=past, question=prompt.question, reference=reference, answer=answer)
    return Prompt(request, system=JUDGE_SYSTEM).messages()


def parse_score(judgment: str) -> tuple[float | None, str]:
    """(score, rule) — or (None, why) when the judgment gives no single score in [1, 10]."""
    for rule, pattern in SCORE_RULES:
        found = {float(match) for match in pattern.findall(judgment)}
        if not found:
            continue
        if len(found) > 1:
            return None, f"ambiguous: {rule} gives {sorted(found)}"
        score = found.pop()
        if not 1 <= score <= 10:
            return None, f"out of range: {score:g}"
        return score, rule
    return None, "no score found"
