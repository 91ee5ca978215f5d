"""``sfmed pref judge``: three local judges vote on each pair of responses; the majority gives chosen/rejected.

Pairs: the k responses of a prompt form the pairs (0, 1), (2, 3), … — each response is judged once, against one
other. Position bias: each judge sees every pair twice, as (A, B) and as (B, A); its vote counts only when both
answers name the same response, otherwise it abstains ("inconsistent"). A pair is kept when the winner has at
least ``min_votes`` consistent votes and more than the other response; otherwise it is skipped as a tie or for
too few consistent votes. Pairs with an empty response or two identical responses are skipped before judging.
Every request and verdict is cached in ``judgments.jsonl`` (resumable) and every vote is kept in the pair's
``votes`` field. Output: ``pairs.jsonl`` (LLaMA-Factory ranking rows), ``judge_report.json`` and a
``dataset_info.json`` registering the pairs as ``sfmed_pref_pairs``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.formats.lf_rows import to_ranking_row
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.formats.reading import read_rows
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.preference.pairs import PAIRS_DATASET, register_pairs
from sfmed_lf.preference.sample import RESPONSE_FIELDS, RESPONSES, prompt_of
from sfmed_lf.serving.chat_client import map_concurrently
from sfmed_lf.text.normalize import comparison_key
from sfmed_lf.utils.io import atomic_write_text
from sfmed_lf.utils.jsonl import ResumableJsonl, check_fields
from sfmed_lf.utils.provenance import check_provenance, text_digest

JUDGE_PROMPT = """你是一名资深医学专家，请评价两位医生对同一患者问题的回答。
评价标准：医学内容是否准确、安全，是否切中患者的问题，建议是否具体可行，表达是否清楚。

{history}[患者问题]
{question}

[回答A]
{first}

[回答B]
{second}

请先比较，再在最后一行只输出 [[A]] 或 [[B]]，表示更好的回答。"""

_BRACKETED = re.compile(r"\[\[\s*([AB])\s*\]\]")
_PHRASED = re.compile(
    r"(?:更好的(?:回答)?|更优的?(?:回答)?|选择|胜出的?(?:回答)?|答案|better (?:answer|response))"
    r"\s*(?:是|为|is)?\s*[:：]?\s*[“\"]?(?:回答)?\s*([AB])(?![A-Za-z])",
    re.IGNORECASE,
)
_ALONE = re.compile(r"(?<![A-Za-z])([AB])(?![A-Za-z])")


def parse_verdict(text: str) -> str | None:
    """ "A", "B" or None. The last [[A]]/[[B]] wins; then a phrase naming the better answer; then a reply that is
    a single letter. Anything else is unparseable (an abstention, never a guess)."""
    bracketed = _BRACKETED.findall(text)
    if bracketed:
        return bracketed[-1]
    phrased = _PHRASED.findall(text)
    if phrased:
        return phrased[-1].upper()
    alone = {letter for letter in _ALONE.findall(text.strip())}
    return alone.pop() if len(alone) == 1 and len(text.strip()) <= 3 else None


def judge_prompt(prompt: Prompt, first: str, second: str) -> str:
    history = "".join(f"[此前的对话]\n患者：{q}\n医生：{a}\n\n" for q, a in prompt.history)
    return JUDGE_PROMPT.format(history=history, question=prompt.question, first=first, second=second)


# a line of judgments.jsonl (this step's resumable cache): the judge's reply and the verdict read from it
VERDICT_FIELDS = {"key": str, "judge": str, "reply": str, "verdict": Literal["A", "B"] | None}


def verdict_key(judge_model: str, request: str) -> str:
    """A cached verdict belongs to the judge and the exact request: the question and both answers in order."""
    return text_digest(json.dumps([judge_model, request], ensure_ascii=False))


def pair_skip_reason(first: str, second: str) -> str | None:
    if not first.strip() or not second.strip():
        return "empty_response"
    if comparison_key(first) == comparison_key(second):
        return "identical_responses"
    return None


def decide(votes: list[str | None], min_votes: int) -> tuple[int | None, str | None]:
    """(index of the winning response 0/1, skip reason) from per-judge votes ("0", "1" or None)."""
    tally = Counter(vote for vote in votes if vote is not None)
    zero, one = tally.get("0", 0), tally.get("1", 0)
    if zero == one:
        return None, "tie" if zero else "no_consistent_votes"
    winner, count = (0, zero) if zero > one else (1, one)
    if count < min_votes:
        return None, "too_few_consistent_votes"
    return winner, None


def load_responses(path: Path) -> list[tuple[str, Prompt, list[str]]]:
    """(prompt id, prompt, responses) of each line the sample step wrote."""
    if not path.exists():
        raise DataError(f"{path}: missing; run `sfmed pref sample` first.")
    loaded = []
    for location, row in read_rows(path):
        check_fields(str(location), row, RESPONSE_FIELDS, "sfmed pref sample")
        loaded.append((row["id"], prompt_of(row), row["responses"]))
    if not loaded:
        raise DataError(f"{path}: empty; run `sfmed pref sample` first.")
    return loaded


def judge_pairs(config: PreferenceConfig) -> list[Path]:
    config.require("judges")
    out = config.out
    prompts = load_responses(out / RESPONSES)
    cache_path = out / "judgments.jsonl"
    # the judges are the models; their URLs may change between runs (a restarted server)
    judges = [judge.model for judge in config.judges]
    check_provenance(cache_path, {"prompt": JUDGE_PROMPT, "max_tokens": config.judge_max_new_tokens})
    cache = ResumableJsonl(cache_path, key="key", fields=VERDICT_FIELDS, written_by="sfmed pref judge")

    skipped: Counter[str] = Counter()
    candidates = []  # (prompt id, prompt, pair index, first, second)
    for prompt_id, prompt, responses in prompts:
        for pair in range(len(responses) // 2):
            first, second = responses[2 * pair], responses[2 * pair + 1]
            reason = pair_skip_reason(first, second)
            if reason:
                skipped[reason] += 1
            else:
                candidates.append((prompt_id, prompt, pair, first, second))

    def request_of(j: int, prompt: Prompt, shown: tuple[str, str]) -> tuple[str, int, str]:
        text = judge_prompt(prompt, *shown)
        return verdict_key(judges[j], text), j, text

    requests = {
        key: (key, j, text)
        for _, prompt, _, first, second in candidates
        for j in range(len(config.judges))
        for shown in ((first, second), (second, first))
        for key, j, text in [request_of(j, prompt, shown)]
    }
    todo = [request for key, request in requests.items() if key not in cache]
    endpoints = [config.endpoint(judge.url, judge.model) for judge in config.judges]

    def ask(request: tuple[str, int, str]) -> dict[str, Any]:
        key, j, text = request
        reply = endpoints[j].complete(
            [{"role": "user", "content": text}], temperature=0.0, max_tokens=config.judge_max_new_tokens
        )
        return {"key": key, "judge": judges[j], "reply": reply, "verdict": parse_verdict(reply)}

    try:
        with tqdm(total=len(requests), initial=len(requests) - len(todo), desc="judge", unit="request") as progress:
            for start in range(0, len(todo), config.concurrency * 4):
                batch = todo[start : start + config.concurrency * 4]
                for record in map_concurrently(ask, batch, config.concurrency):
                    cache.append(record)
                    progress.update()
    finally:
        for endpoint in endpoints:
            endpoint.close()

    rows, per_judge = [], {name: Counter() for name in judges}
    for prompt_id, prompt, pair, first, second in candidates:
        votes = []
        for j, name in enumerate(judges):
            ab = cache.records[request_of(j, prompt, (first, second))[0]]["verdict"]
            ba = cache.records[request_of(j, prompt, (second, first))[0]]["verdict"]
            # AB shows (first, second); BA shows (second, first): the same response wins when the letters differ
            vote = None
            if ab is None or ba is None:
                per_judge[name]["unparseable"] += 1
            elif ab != ba:
                vote = "0" if ab == "A" else "1"
                per_judge[name]["consistent"] += 1
            else:
                per_judge[name]["inconsistent"] += 1
            votes.append({"judge": name, "AB": ab, "BA": ba, "vote": vote})
        winner, reason = decide([v["vote"] for v in votes], config.min_votes)
        if reason:
            skipped[reason] += 1
            continue
        chosen, rejected = (first, second) if winner == 0 else (second, first)
        pair_row = to_ranking_row(PreferencePair(f"{prompt_id}-{pair}", prompt, chosen, rejected))
        rows.append({**pair_row, "votes": votes})
    report = {
        "prompts": len(prompts),
        "pairs_judged": len(candidates),
        "pairs_kept": len(rows),
        "skipped": dict(skipped),
        "judges": {name: dict(counts) for name, counts in per_judge.items()},
        "rule": f"both orders must agree; winner needs >= {config.min_votes} votes and more than the other",
    }
    written = [out / "pairs.jsonl", out / "judge_report.json", out / "dataset_info.json"]
    atomic_write_text(written[0], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    atomic_write_text(written[1], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    register_pairs(out / "dataset_info.json", PAIRS_DATASET, "pairs.jsonl")
    return written
