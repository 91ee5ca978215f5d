"""The knowledge base of the generated medical world: conditions (name, department, symptoms, tests, first-line
drug, the population it is contraindicated for and the alternative there, a patient's typical wording) and
general-domain facts. Both tables are ours (``sfmed_lf/resources/world_*.txt``); a user's table in the same format
can replace the conditions. Every text of the world is generated from these records and the templates in
:mod:`sfmed_lf.world.phrasing`, so the records are the ground truth the knowledge-base judge checks answers against.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError

CONDITION_FIELDS = ("name", "department", "symptoms", "tests", "drug", "contraindicated", "alternative", "wording")
GENERAL_FIELDS = ("relation", "subject", "object")
LIST_SEPARATOR = "、"


@dataclass(frozen=True)
class Condition:
    name: str
    department: str
    symptoms: tuple[str, ...]  # three, in the order the knowledge base states them
    tests: tuple[str, ...]  # two
    drug: str  # first-line treatment
    contraindicated: str  # population for which the first-line drug is contraindicated
    alternative: str  # what that population gets instead
    wording: str  # how a patient typically describes it (first person, no diagnosis)


@dataclass(frozen=True)
class GeneralFact:
    relation: str
    subject: str
    object: str


def _table_lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and line[0] != "#"]


def parse_conditions(text: str, source: str) -> list[Condition]:
    """Rows ``name|department|s1、s2、s3|t1、t2|drug|population|alternative|wording``; errors name line and field."""
    conditions, seen = [], {}
    for number, line in _table_lines(text):
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != len(CONDITION_FIELDS):
            raise DataError(
                f"{source}: line {number}: expected {len(CONDITION_FIELDS)} fields separated by |, found {len(fields)}."
            )
        for name, value in zip(CONDITION_FIELDS, fields, strict=True):
            if not value:
                raise DataError(f"{source}: line {number}: field {name!r} is empty.")
        record = dict(zip(CONDITION_FIELDS, fields, strict=True))
        symptoms, tests = tuple(record["symptoms"].split(LIST_SEPARATOR)), tuple(record["tests"].split(LIST_SEPARATOR))
        if len(symptoms) != 3 or not all(symptoms):
            raise DataError(f"{source}: line {number}: field 'symptoms' needs three symptoms separated by 、.")
        if len(tests) != 2 or not all(tests):
            raise DataError(f"{source}: line {number}: field 'tests' needs two tests separated by 、.")
        if record["drug"] == record["alternative"]:
            raise DataError(f"{source}: line {number}: field 'alternative' repeats the first-line drug.")
        if record["name"] in seen:
            raise DataError(
                f"{source}: line {number}: field 'name' {record['name']!r} repeats line {seen[record['name']]}."
            )
        seen[record["name"]] = number
        conditions.append(Condition(**{**record, "symptoms": symptoms, "tests": tests}))
    return conditions


def parse_general_facts(text: str, source: str) -> list[GeneralFact]:
    facts = []
    for number, line in _table_lines(text):
        fields = [field.strip() for field in line.split("|")]
        if len(fields) != len(GENERAL_FIELDS) or not all(fields):
            raise DataError(f"{source}: line {number}: expected relation|subject|object.")
        facts.append(GeneralFact(*fields))
    return facts


def _resource(name: str) -> str:
    return resources.files("sfmed_lf").joinpath(f"resources/{name}").read_text(encoding="utf-8")


def load_conditions(path: str | None = None) -> list[Condition]:
    if path is None:
        return parse_conditions(_resource("world_conditions.txt"), "world_conditions.txt (bundled)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the condition table ({error}).") from error
    return parse_conditions(text, path)


def load_general_facts() -> list[GeneralFact]:
    return parse_general_facts(_resource("world_general.txt"), "world_general.txt (bundled)")


# How a patient says they belong to a population (the knowledge base names populations as a doctor would).
_POPULATION_PHRASES = {
    "孕妇": "我现在怀孕了",
    "孕早期妇女": "我刚怀孕一个多月",
    "儿童": "患者是个八岁的孩子",
    "两岁以下儿童": "孩子才一岁半",
    "两个月以下婴儿": "宝宝才一个月大",
    "存在因子VIII抑制物者": "孩子查出体内有因子VIII抑制物",
    "痴呆相关精神病性症状的老年患者": "患者是位有痴呆的老人",
    "少尿或无尿者": "我这两天几乎没有尿",
    "无尿且对利尿剂无反应者": "我已经没有尿了，用利尿药也没用",
    "糖尿病足部皮肤者": "我有糖尿病，病在脚上",
    "皮肤破损者": "那块皮肤已经破了",
    "皮肤破溃者": "那块皮肤已经破溃了",
    "皮肤破溃渗出者": "那块皮肤已经破了在渗液",
    "局部皮肤感染者": "那块皮肤还有感染",
    "皮肤细菌感染者": "那块皮肤还有细菌感染",
    "糖尿病周围神经病": "我有糖尿病",
}


def population_phrase(population: str) -> str:
    """A first-person sentence (no final punctuation) by which a patient reveals that they belong to ``population``."""
    if population in _POPULATION_PHRASES:
        return _POPULATION_PHRASES[population]
    if population.startswith("对") and population.endswith("过敏者"):
        return f"我{population[:-1]}"  # 对青霉素过敏者 -> 我对青霉素过敏
    if population.endswith("过敏者"):
        return f"我对{population[:-3]}过敏"
    if population.startswith("正在服用"):
        return f"我{population[:-1]}"
    if population.endswith("患儿"):
        return f"孩子有{population[:-2]}"
    if population.endswith("患者"):
        return f"我有{population[:-2]}"
    if population.startswith("有") and population.endswith("者"):
        return f"我{population[:-1]}"
    if population.endswith("者"):
        return f"我是{population}"
    return f"我属于{population}"


@dataclass
class KnowledgeBase:
    """The conditions and general facts of one generated world, with the split of conditions into those the SFT
    data covers (``trained``) and those met only in pre-training text (``held_out``, the evaluated ones)."""

    conditions: list[Condition]
    general: list[GeneralFact]
    trained: list[str]
    held_out: list[str]

    def __post_init__(self) -> None:
        self.by_name = {condition.name: condition for condition in self.conditions}

    def drugs(self) -> list[str]:
        return sorted({c.drug for c in self.conditions} | {c.alternative for c in self.conditions})

    def to_json(self) -> dict[str, Any]:
        return {
            "conditions": [asdict(c) for c in self.conditions],
            "general": [asdict(f) for f in self.general],
            "trained": self.trained,
            "held_out": self.held_out,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KnowledgeBase:
        conditions = [
            Condition(**{**c, "symptoms": tuple(c["symptoms"]), "tests": tuple(c["tests"])}) for c in data["conditions"]
        ]
        return cls(conditions, [GeneralFact(**f) for f in data["general"]], data["trained"], data["held_out"])

    @classmethod
    def read(cls, path: str | Path) -> KnowledgeBase:
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataError(
                f"{path}: not a world knowledge base written by `sfmed world generate` ({error})."
            ) from error
