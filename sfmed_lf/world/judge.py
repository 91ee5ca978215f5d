"""A judge that checks answers against the world's knowledge base, behind an OpenAI-compatible
``/v1/chat/completions`` (``sfmed world judge WORLD_DIR --port N``).

It answers the two prompt formats the package sends to judges, recognised by their section markers:

* the pairwise prompt of ``sfmed pref judge`` (``[回答A]``/``[回答B]``): the verdict names the answer with the
  higher score, ``[[A]]`` or ``[[B]]``; a tie names A — a position bias the judge step's order swap turns into an
  abstention, as for any judge;
* the reference-guided prompt of ``sfmed eval judge`` (``[参考答案]``/``[AI医生的回答]``): ``评分：[[X]]``, 1-10.

The condition a prompt is about, and whether it is a single- or multi-turn consultation, come from the prompt index
the world generator wrote (``kb.json``); for other prompts, from the condition the reference names, else the one
whose typical wording and symptoms the patient's text matches best. An answer is then checked:

* a question back to the patient: wrong in single-turn mode; in multi-turn mode good when it asks about a symptom
  of the condition nobody has mentioned yet, poor when it repeats one;
* an answer: the diagnosis, department, tests, the first-line drug — or for a patient in the contraindicated
  population, the alternative — and the contraindication stated; a drug that belongs to neither, another
  diagnosis, or the contraindicated drug recommended to that population cost points.

Three "models" weigh the same checks differently (facts, safety, conduct), as three judges would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sfmed_lf.errors import DataError
from sfmed_lf.serving.chat_server import ChatCompletionServer
from sfmed_lf.world.generate import prompt_key
from sfmed_lf.world.knowledge import Condition, KnowledgeBase, population_phrase

_PAIRWISE = re.compile(
    r"\[患者问题\]\n(?P<question>.*?)\n\n\[回答A\]\n(?P<a>.*?)\n\n\[回答B\]\n(?P<b>.*)\n\n请先比较", re.DOTALL
)
_PAIRWISE_HISTORY = re.compile(r"\[此前的对话\]\n患者：(?P<q>.*?)\n医生：(?P<a>.*?)\n\n", re.DOTALL)
_REFERENCED = re.compile(
    r"\[患者问题\]\n(?P<question>.*?)\n\n\[参考答案\]\n(?P<reference>.*?)\n\n\[AI医生的回答\]\n(?P<answer>.*)\Z",
    re.DOTALL,
)
_REFERENCED_HISTORY = re.compile(r"\[对话历史·患者\]\n(?P<q>.*?)\n\[对话历史·医生\]\n(?P<a>.*?)\n\n", re.DOTALL)
_QUESTION_BACK = re.compile(r"[？?]|吗$|呢$")
_NEGATED_DRUG = "(?:禁用|不能用|不宜用|不要用)"


@dataclass(frozen=True)
class Weights:
    diagnosis: float = 3.0
    department: float = 1.0
    tests: float = 1.0
    drug: float = 3.0
    caution: float = 1.0
    wrong_drug: float = 3.0
    wrong_diagnosis: float = 2.0
    missed_contraindication: float = 3.0
    targeted_follow_up: float = 7.0
    repeated_follow_up: float = 1.0
    untargeted_follow_up: float = 3.0
    follow_up_in_single_turn: float = 1.0


JUDGE_MODELS: dict[str, Weights] = {
    "kb-facts": Weights(),
    "kb-safety": Weights(caution=2.0, missed_contraindication=5.0, drug=2.5),
    "kb-conduct": Weights(diagnosis=2.5, targeted_follow_up=8.0, repeated_follow_up=0.0),
}
DEFAULT_MODEL = "kb-facts"


@dataclass
class Situation:
    """What the judge knows about the prompt an answer responds to."""

    condition: Condition
    multi_turn: bool
    in_population: bool
    mentioned: set[str] = field(default_factory=set)  # symptoms already asked about or told


@dataclass
class Assessment:
    score: float
    notes: list[str]


class KnowledgeJudge:
    def __init__(self, kb: KnowledgeBase, prompts: dict[str, dict[str, str]]) -> None:
        self.kb, self.prompts = kb, prompts
        # longest first, so that 阿莫西林克拉维酸钾 is not also read as 阿莫西林
        self.drug_pattern = re.compile("|".join(re.escape(d) for d in sorted(kb.drugs(), key=len, reverse=True)))
        names = sorted(kb.by_name, key=len, reverse=True)
        self.name_pattern = re.compile("|".join(re.escape(name) for name in names))

    @classmethod
    def from_world(cls, world_dir: str | Path) -> KnowledgeJudge:
        import json

        path = Path(world_dir) / "kb.json"
        kb = KnowledgeBase.read(path)
        prompts = json.loads(path.read_text(encoding="utf-8")).get("prompts", {})
        if not isinstance(prompts, dict):
            raise DataError(f"{path}: field 'prompts': {type(prompts).__name__}, expected an object.")
        for key, entry in prompts.items():  # checked here, not as a KeyError inside a request
            if not isinstance(entry, dict) or entry.get("condition") not in kb.by_name:
                raise DataError(f"{path}: prompts[{key!r}]: field 'condition': {entry!r} names no condition of it.")
            mode = entry.get("mode")
            if mode not in ("single", "multi"):
                raise DataError(f"{path}: prompts[{key!r}]: field 'mode': {mode!r}, expected single or multi.")
        return cls(kb, prompts)

    # ---- what the prompt is about --------------------------------------------------------------------------------
    def situation(self, question: str, history: list[tuple[str, str]], reference: str = "") -> Situation | None:
        indexed = self.prompts.get(prompt_key(question, history))
        if indexed:
            condition = self.kb.by_name[indexed["condition"]]
            multi_turn = indexed["mode"] == "multi"
        else:
            condition = self._named(reference) or self._best_match(question, history)
            if condition is None:
                return None
            multi_turn = bool(history)
        patient_text = question + "".join(q for q, _ in history)
        said = patient_text + "".join(a for _, a in history)
        return Situation(
            condition,
            multi_turn,
            in_population=population_phrase(condition.contraindicated) in patient_text,
            mentioned={s for s in condition.symptoms if s in said},
        )

    def _named(self, text: str) -> Condition | None:
        named = {match for match in self.name_pattern.findall(text)}
        return self.kb.by_name[named.pop()] if len(named) == 1 else None

    def _best_match(self, question: str, history: list[tuple[str, str]]) -> Condition | None:
        text = question + "".join(q for q, _ in history)

        def overlap(condition: Condition) -> float:
            wording = sum(1 for part in re.split(r"[，。、]", condition.wording) if part and part in text)
            return 2 * wording + sum(1 for s in condition.symptoms if s in text)

        best = max(self.kb.conditions, key=overlap)
        return best if overlap(best) > 0 else None

    # ---- the checks ----------------------------------------------------------------------------------------------
    def assess(self, answer: str, situation: Situation, weights: Weights) -> Assessment:
        condition, answer = situation.condition, answer.strip()
        if not answer:
            return Assessment(1.0, ["empty answer"])
        named = set(self.name_pattern.findall(answer))
        if _QUESTION_BACK.search(answer) and condition.name not in named:
            asked = {s for s in condition.symptoms if s in answer}
            if not situation.multi_turn:
                return Assessment(weights.follow_up_in_single_turn, ["asks a follow-up question in single-turn mode"])
            if asked & situation.mentioned:
                return Assessment(weights.repeated_follow_up, ["repeats a question already asked or answered"])
            if asked:
                return Assessment(weights.targeted_follow_up, ["asks about a symptom not yet mentioned"])
            return Assessment(weights.untargeted_follow_up, ["asks a follow-up question about nothing specific"])
        score, notes = 1.0, []
        if condition.name in named:
            score += weights.diagnosis
            notes.append("right diagnosis")
        if named - {condition.name}:
            score -= weights.wrong_diagnosis
            notes.append(f"names other conditions: {'、'.join(sorted(named - {condition.name}))}")
        if condition.department in answer:
            score += weights.department
        if any(test in answer for test in condition.tests):
            score += weights.tests
        drugs = set(self.drug_pattern.findall(answer))
        expected = condition.alternative if situation.in_population else condition.drug
        if expected in drugs:
            score += weights.drug
            notes.append(f"recommends {expected}")
        wrong = drugs - {condition.drug, condition.alternative}
        if wrong:
            score -= weights.wrong_drug
            notes.append(f"wrong drug: {'、'.join(sorted(wrong))}")
        warned = re.search(re.escape(condition.contraindicated) + ".{0,4}" + _NEGATED_DRUG, answer) or re.search(
            re.escape(condition.drug) + "禁用于" + re.escape(condition.contraindicated), answer
        )
        if situation.in_population and condition.drug in drugs and condition.alternative not in drugs:
            score -= weights.missed_contraindication
            notes.append(f"recommends {condition.drug} to {condition.contraindicated}")
        elif warned:
            score += weights.caution
            notes.append("states the contraindication")
        return Assessment(min(10.0, max(1.0, score)), notes)

    # ---- the two prompt formats ----------------------------------------------------------------------------------
    def reply(self, prompt: str, model: str) -> str:
        weights = JUDGE_MODELS[model]
        pairwise = _PAIRWISE.search(prompt)
        if pairwise:
            history = [(m["q"], m["a"]) for m in _PAIRWISE_HISTORY.finditer(prompt[: pairwise.start()])]
            situation = self.situation(pairwise["question"], history)
            if situation is None:
                return "无法在知识库中找到这个问题对应的疾病，不作评判。"
            first = self.assess(pairwise["a"], situation, weights)
            second = self.assess(pairwise["b"], situation, weights)
            winner = "B" if second.score > first.score else "A"
            return (
                f"疾病：{situation.condition.name}。回答A得分 {first.score:g}（{'；'.join(first.notes) or '无'}），"
                f"回答B得分 {second.score:g}（{'；'.join(second.notes) or '无'}）。\n[[{winner}]]"
            )
        referenced = _REFERENCED.search(prompt)
        if referenced:
            history = [(m["q"], m["a"]) for m in _REFERENCED_HISTORY.finditer(prompt[: referenced.start()])]
            situation = self.situation(referenced["question"], history, referenced["reference"])
            if situation is None:
                return "无法在知识库中找到这个问题对应的疾病，不作评分。"
            result = self.assess(referenced["answer"], situation, weights)
            return (
                f"疾病：{situation.condition.name}。{'；'.join(result.notes) or '无要点'}。\n评分：[[{result.score:g}]]"
            )
        return "这不是本评审能识别的请求（需要成对比较或参考答案评分的格式）。"


def world_judge_server(world_dir: str | Path, host: str = "127.0.0.1", port: int = 0) -> ChatCompletionServer:
    """The knowledge-base judge as three models behind one OpenAI-compatible server."""
    judge = KnowledgeJudge.from_world(world_dir)

    def reply(payload: dict) -> tuple[int, str]:
        model = payload.get("model")
        if model not in JUDGE_MODELS:
            return 404, f"unknown model {model!r}; serving {', '.join(JUDGE_MODELS)}"
        messages = payload.get("messages") or []
        if not messages or not isinstance(messages[-1].get("content"), str):
            return 400, "the request needs messages whose last one has text content"
        return 200, judge.reply(messages[-1]["content"], model)

    return ChatCompletionServer(reply, list(JUDGE_MODELS), host, port)
