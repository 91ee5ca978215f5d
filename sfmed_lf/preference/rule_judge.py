"""A rule-based judge behind an OpenAI-compatible ``/v1/chat/completions``: a cheap, deterministic stand-in for the
judge models where none can run (the CPU demo), and a baseline to compare real judges with.

``sfmed pref rule-judge --port 8100`` serves three "models", each a rule that scores an answer alone; the
verdict names the higher-scoring answer, and a tie names answer A — a position bias that the judge step's
order swap turns into an abstention, as it would for a real judge:

* ``terms``: distinct terms of the medical lexicon in the answer;
* ``length``: characters, up to 400 (longer answers tend to be more complete);
* ``clean``: minus the count of undecodable characters and of characters repeated three times in a row.

The request must carry the judge prompt of :mod:`sfmed_lf.preference.judge` (the answers are read from it).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sfmed_lf.serving.chat_server import ChatCompletionServer
from sfmed_lf.text.lexicon import Lexicon

_ANSWERS = re.compile(r"\[回答A\]\n(?P<a>.*)\n\n\[回答B\]\n(?P<b>.*)\n\n请先比较", re.DOTALL)


def rules() -> dict[str, Callable[[str], float]]:
    lexicon = Lexicon(None)
    return {
        "terms": lambda answer: float(len(lexicon.terms_in(answer))),
        "length": lambda answer: float(min(len(answer.strip()), 400)),
        "clean": lambda answer: -float(answer.count("\ufffd") + len(re.findall(r"(.)\1\1", answer))),
    }


def verdict(rule: Callable[[str], float], prompt: str) -> str:
    match = _ANSWERS.search(prompt)
    if match is None:
        return "这不是一个比较两个回答的评审请求。"
    first, second = rule(match["a"]), rule(match["b"])
    return f"回答A得分 {first:g}，回答B得分 {second:g}。\n[[{'B' if second > first else 'A'}]]"


def rule_judge_server(host: str = "127.0.0.1", port: int = 0) -> ChatCompletionServer:
    """The three rule judges behind one OpenAI-compatible server; the request's ``model`` picks the rule."""
    judges = rules()

    def reply(payload: dict) -> tuple[int, str]:
        rule = judges.get(payload.get("model"))
        if rule is None:
            return 404, f"unknown model {payload.get('model')!r}; serving {', '.join(judges)}"
        return 200, verdict(rule, payload["messages"][-1]["content"])

    return ChatCompletionServer(reply, list(judges), host, port)
