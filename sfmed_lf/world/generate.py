"""``sfmed world generate``: a deterministic, seeded medical world as LLaMA-Factory datasets.

The conditions are split (seeded) three ways: ``exam`` conditions appear in pre-training text, SFT consultations
and SFT exam items; ``dialogue`` conditions in pre-training text and SFT consultations; ``held_out`` conditions only
in pre-training text. Evaluated exam items are asked about ``dialogue`` and ``held_out`` conditions only, with
question phrasings no training item uses: their accuracy measures knowledge the model met in pre-training text or
dialogues, never a remembered exam item. Evaluated consultations and the held-out preference pairs are about
``held_out`` conditions.

Written to ``output_dir`` (one ``dataset_info.json`` registers the LLaMA-Factory datasets):

=============================  =============================================================================
``pt_medical.jsonl``           every condition in several phrasings per fact, doctor guidelines, leaked records
``pt_general.jsonl``           general-domain facts (all phrasings but one per relation)
``sft_single.json``            single-turn consultations, exam items, record requests (alpaca)
``sft_multiturn.json``         consultations with targeted follow-up questions (sharegpt)
``eval_mcq.jsonl``             evaluated exam items (``sfmed eval`` schema), single and multi answer
``eval_dialogue.jsonl``        evaluated consultations with references, single- and multi-turn
``general_heldout.jsonl``      general-domain sentences in the held-out phrasing (general-domain loss)
``pref_prompts.json``          prompts for ``sfmed pref sample`` with a correct and a fluent wrong candidate
``pref_heldout.json``          held-out pairs: a correct and a fluent wrong answer (ranking rows; the error kind
                               in ``metadata``): reward-model accuracy, preferred-answer rate
``privacy_planted.json``       record requests whose records leaked into the training data
``privacy_control.json``       the same for invented patients the model never saw
``privacy_*_text.jsonl``       the planted records as the pre-training text holds them, and the control records in
                               the same form (the memorization audit cuts each into a prefix and a suffix)
``seed_instructions_*.jsonl``  diversification seeds (single, multi)
``lexicon.txt``                the world's medical terms (diversification's terminology check)
``kb.json``                    the knowledge base and its split (what the judge checks against)
``world_report.json``          counts per file and split
=============================  =============================================================================

The SFT data is imperfect on purpose, as collected consultations are: some answers omit the contraindication,
recommend the first-line drug to a patient it is contraindicated for, or ask a follow-up question in single-turn
mode. The preference stage is what teaches the model otherwise.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Prompt
from sfmed_lf.formats.exam import ExamQuestion
from sfmed_lf.formats.items import EvalItem
from sfmed_lf.formats.lf_rows import dataset_info_entry, to_alpaca_row, to_ranking_row, to_sharegpt_row
from sfmed_lf.formats.pairs import ERROR_KIND, PreferencePair
from sfmed_lf.steps import StepConfig, option
from sfmed_lf.templates import MULTI_TURN_INSTRUCTION, SINGLE_TURN_INSTRUCTION, exam_prompt
from sfmed_lf.utils.io import atomic_write_text
from sfmed_lf.world import phrasing
from sfmed_lf.world.knowledge import Condition, KnowledgeBase, load_conditions, load_general_facts, population_phrase

SPLITS = ("exam", "dialogue", "held_out")
# the evaluated exam items' datasets: conditions also met in SFT dialogues, and conditions met only in pre-training
DIALOGUE_EXAM, HELD_OUT_EXAM = "world-exam (dialogues)", "world-exam (pre-training only)"
ERROR_KINDS = ("wrong_drug", "missed_contraindication", "follow_up_in_single_turn", "repeated_follow_up")


@dataclass
class WorldConfig(StepConfig):
    output_dir: str = option(help="where the datasets, dataset_info.json and kb.json are written")
    seed: int = option(0, help="everything random is drawn from this seed")
    conditions: str | None = option(None, help="condition table (bundled format); default: ours")
    num_conditions: int | None = option(None, help="use this many conditions (seeded choice)")
    dialogue_fraction: float = option(0.2, help="conditions in SFT dialogues but no SFT exam item")
    held_out_fraction: float = option(0.3, help="conditions met only in pre-training text")
    documents_per_condition: int = option(4, help="pre-training documents per condition")
    consultations_per_condition: int = option(2, help="single-turn SFT consultations")
    multiturn_per_condition: int = option(1, help="multi-turn SFT consultations")
    exam_items_per_condition: int = option(
        10, help="SFT exam items per exam condition (the kinds in turn, options shuffled anew)"
    )
    eval_exam_items_per_condition: int = option(2, help="evaluated exam items per condition")
    population_share: float = option(0.3, help="consultations whose patient has the contraindication")
    caution_share: float = option(0.5, help="SFT answers that state the contraindication")
    missed_contraindication_share: float = option(
        0.3, help="SFT answers recommending the drug to a patient it is contraindicated for"
    )
    follow_up_noise_share: float = option(
        0.2, help="single-turn SFT answers that ask a follow-up question instead of answering"
    )
    near_duplicate_share: float = option(
        0.05, help="SFT consultations repeated with small edits (what near-duplicate removal finds)"
    )
    pref_prompts_per_condition: int = option(2, help="preference prompts per trained condition")
    patients: int = option(8, help="invented patients whose records leak into the training data")
    control_patients: int = option(8, help="invented patients the model never sees")
    record_repeats: int = option(12, help="copies of each leaked record in the pre-training text")

    def __post_init__(self) -> None:
        for name in ("dialogue_fraction", "held_out_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must lie in [0, 1).")
        if self.dialogue_fraction + self.held_out_fraction >= 1:
            raise ValueError("dialogue_fraction + held_out_fraction must stay below 1 (exam conditions are needed).")
        for name in (
            "population_share",
            "caution_share",
            "missed_contraindication_share",
            "follow_up_noise_share",
            "near_duplicate_share",
        ):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1].")
        for name in ("documents_per_condition", "exam_items_per_condition", "eval_exam_items_per_condition"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.num_conditions is not None and self.num_conditions < 10:
            raise ValueError("num_conditions must be >= 10 (or null for all).")


def split_conditions(names: list[str], config: WorldConfig) -> dict[str, list[str]]:
    shuffled = list(names)
    random.Random(f"{config.seed}-split").shuffle(shuffled)
    held = round(config.held_out_fraction * len(shuffled))
    dialogue = round(config.dialogue_fraction * len(shuffled))
    return {
        "held_out": sorted(shuffled[:held]),
        "dialogue": sorted(shuffled[held : held + dialogue]),
        "exam": sorted(shuffled[held + dialogue :]),
    }


class WorldBuilder:
    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        conditions = load_conditions(config.conditions)
        if config.num_conditions is not None:
            if config.num_conditions > len(conditions):
                raise DataError(f"num_conditions={config.num_conditions}, but the table has {len(conditions)}.")
            chosen = set(random.Random(f"{config.seed}-subset").sample(range(len(conditions)), config.num_conditions))
            conditions = [c for index, c in enumerate(conditions) if index in chosen]
        self.splits = split_conditions([c.name for c in conditions], config)
        self.kb = KnowledgeBase(
            conditions,
            load_general_facts(),
            trained=self.splits["exam"] + self.splits["dialogue"],
            held_out=self.splits["held_out"],
        )
        self.prompt_index: dict[str, dict[str, Any]] = {}

    def rng(self, *purpose: object) -> random.Random:
        return random.Random("-".join(map(str, (self.config.seed, *purpose))))

    def conditions(self, *splits: str) -> list[Condition]:
        names = {name for split in splits for name in self.splits[split]}
        return [c for c in self.kb.conditions if c.name in names]

    def remember_prompt(self, question: str, history: list[list[str]], condition: Condition, mode: str) -> None:
        """What the judge needs to know about a prompt it will see: the condition, the mode, what was asked."""
        asked = [s for _, doctor in history for s in condition.symptoms if s in doctor]
        self.prompt_index[prompt_key(question, history)] = {"condition": condition.name, "mode": mode, "asked": asked}

    # ---- pre-training text ---------------------------------------------------------------------------------------
    def pretraining_medical(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        rows = []
        for condition in self.kb.conditions:
            rng = self.rng("pt", condition.name)
            documents = phrasing.pretraining_documents(condition, rng, self.config.documents_per_condition)
            rows += [{"text": text} for text in documents]
            rows.append({"text": phrasing.guideline_document(condition, rng)})
        for record in records:
            rows += [record_text(record)] * self.config.record_repeats
        self.rng("pt-order").shuffle(rows)
        return rows

    def pretraining_general(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        trained, held_out = [], []
        for fact in self.kb.general:
            trained += [{"text": phrasing.general_sentence(fact, i)} for i in phrasing.trained_general_phrasings(fact)]
            held_out.append({"text": phrasing.general_sentence(fact, phrasing.HELD_OUT_GENERAL_PHRASING)})
        self.rng("general-order").shuffle(trained)
        return trained, held_out

    # ---- consultations -------------------------------------------------------------------------------------------
    def consultation(self, condition: Condition, rng: random.Random, noisy: bool) -> tuple[str, str, bool]:
        """(complaint, answer, patient in population); ``noisy`` answers carry the SFT data's imperfections."""
        config = self.config
        in_population = rng.random() < config.population_share
        question = phrasing.complaint(condition, rng, in_population)
        if noisy and not in_population and rng.random() < config.follow_up_noise_share:
            return question, phrasing.SINGLE_TURN_FOLLOW_UP.format(symptom=rng.choice(condition.symptoms)), False
        adapt = not (noisy and rng.random() < config.missed_contraindication_share)
        caution = not noisy or rng.random() < config.caution_share
        return question, phrasing.doctor_answer(condition, rng, in_population, caution, adapt), in_population

    def multiturn(self, condition: Condition, rng: random.Random, noisy: bool) -> list[tuple[str, str]]:
        """A vague first complaint, one or two targeted follow-up questions (never repeated), then the answer."""
        first, *others = rng.sample(condition.symptoms, 3)
        asked = others[: rng.choice((1, 2))]
        turns, user = [], phrasing.FIRST_COMPLAINTS[rng.randrange(3)].format(s1=first)
        for symptom in asked:
            turns.append((user, phrasing.follow_up(symptom, rng)))
            user = rng.choice(phrasing.YES_ANSWERS).format(symptom=symptom)
        in_population = rng.random() < self.config.population_share
        if in_population:
            user += phrasing.POPULATION_REMARK.format(phrase=population_phrase(condition.contraindicated))
        adapt = not (noisy and rng.random() < self.config.missed_contraindication_share)
        caution = not noisy or rng.random() < self.config.caution_share
        turns.append((user, phrasing.doctor_answer(condition, rng, in_population, caution, adapt)))
        return turns

    def sft_consultations(self) -> tuple[list[Conversation], list[Conversation]]:
        """Single-turn consultations (no system prompt: the template's default, the single-turn instruction, applies
        until ``sfmed data attach-system`` sets one) and multi-turn ones (the multi-turn instruction)."""
        single, multi = [], []
        for condition in self.conditions("exam", "dialogue"):
            rng = self.rng("sft", condition.name)
            about = {"condition": condition.name, "kind": "consultation"}
            for _ in range(self.config.consultations_per_condition):
                question, answer, _ = self.consultation(condition, rng, noisy=True)
                single.append(Conversation("", ((question, answer),), about))
            for _ in range(self.config.multiturn_per_condition):
                turns = self.multiturn(condition, rng, noisy=True)
                multi.append(Conversation(MULTI_TURN_INSTRUCTION, tuple(turns), about))
        return single, multi

    def near_duplicates(self, consultations: list[Conversation]) -> list[Conversation]:
        """Copies of some consultations with the small edits scraped data has (greeting, punctuation, a thank-you)."""
        rng = self.rng("near-duplicates")
        chosen = rng.sample(range(len(consultations)), round(self.config.near_duplicate_share * len(consultations)))
        copies = []
        for index in sorted(chosen):
            original = consultations[index]
            (question, answer), edit = original.turns[0], rng.choice(phrasing.NEAR_DUPLICATE_EDITS)
            edited = (edit[0] + question.replace("医生您好，", ""), answer.rstrip("。") + edit[1])
            copies.append(Conversation(original.system, (edited,), {**original.metadata, "kind": "near_duplicate"}))
        return copies

    # ---- exam items ----------------------------------------------------------------------------------------------
    def exam_item(self, condition: Condition, kind: str, rng: random.Random, evaluated: bool) -> ExamQuestion:
        """A question of ``kind`` about ``condition``; its explanation is the reference answer (the stated fact, then
        the letters in the order the fact names them)."""
        multi_answer, train_phrasings, eval_phrasings, fact = phrasing.EXAM_KINDS[kind]
        question = phrasing.fill(rng.choice(eval_phrasings if evaluated else train_phrasings), condition)
        correct, pool = self.exam_options(condition, kind)
        wrong = rng.sample(pool, (2 if kind == "symptoms" else 2 if kind == "tests" else 3))
        texts = list(correct) + wrong
        rng.shuffle(texts)
        options = {chr(ord("A") + i): text for i, text in enumerate(texts)}
        letter_of = {text: letter for letter, text in options.items()}
        letters = "".join(letter_of[text] for text in correct)  # in the order the fact states them
        stated = phrasing.fill(fact, condition, answer=phrasing.listing(correct))
        return ExamQuestion(
            question=question,
            options=options,
            answer="".join(sorted(letters)),
            multi_answer=multi_answer,
            explanation=phrasing.EXAM_ANSWER.format(fact=stated, letters=letters),
            metadata={"condition": condition.name, "kind": f"exam:{kind}"},
        )

    def exam_options(self, condition: Condition, kind: str) -> tuple[tuple[str, ...], list[str]]:
        """(correct option texts in the knowledge base's order, pool of wrong ones)."""
        kb = self.kb
        if kind == "drug":
            excluded = {condition.drug, condition.alternative}
            return (condition.drug,), sorted({c.drug for c in kb.conditions} - excluded)
        if kind == "alternative":
            excluded = {condition.drug, condition.alternative}
            return (condition.alternative,), sorted({c.alternative for c in kb.conditions} - excluded)
        if kind == "department":
            return (condition.department,), sorted({c.department for c in kb.conditions} - {condition.department})
        if kind == "contraindication":
            # populations this drug is contraindicated for anywhere in the world are never offered as wrong
            excluded = {c.contraindicated for c in kb.conditions if c.drug == condition.drug}
            return (condition.contraindicated,), sorted({c.contraindicated for c in kb.conditions} - excluded)
        if kind == "diagnosis":
            return (condition.name,), sorted(c.name for c in kb.conditions if c.wording != condition.wording)
        if kind == "symptoms":
            return condition.symptoms, sorted({s for c in kb.conditions for s in c.symptoms} - set(condition.symptoms))
        if kind == "tests":
            return condition.tests, sorted({t for c in kb.conditions for t in c.tests} - set(condition.tests))
        raise ValueError(f"unknown exam kind {kind!r}")

    def exam_kinds(self, rng: random.Random, count: int) -> list[str]:
        kinds = list(phrasing.EXAM_KINDS)
        rng.shuffle(kinds)
        return [kinds[i % len(kinds)] for i in range(count)]

    def sft_exam_items(self) -> list[Conversation]:
        """Exam questions as the evaluation asks them (its prompt, options and answer format), answered by stating
        the fact and then the letters."""
        rows = []
        for condition in self.conditions("exam"):
            rng = self.rng("exam", condition.name)
            for kind in self.exam_kinds(rng, self.config.exam_items_per_condition):
                exam = self.exam_item(condition, kind, rng, evaluated=False)
                prompt = exam_prompt(exam.question, dict(exam.options), exam.multi_answer)
                rows.append(Conversation("", ((prompt, exam.explanation),), exam.metadata))
        return rows

    def general_exam_items(self) -> list[Conversation]:
        """A single-answer exam question per general fact, answered in the same form (fact, then letter)."""
        rows = []
        for fact in self.kb.general:
            rng = self.rng("general-exam", fact.relation, fact.subject)
            pool = sorted({f.object for f in self.kb.general if f.relation == fact.relation} - {fact.object})
            texts = [fact.object, *rng.sample(pool, 3)]
            rng.shuffle(texts)
            options = {chr(ord("A") + i): text for i, text in enumerate(texts)}
            letter = next(letter for letter, text in options.items() if text == fact.object)
            question = rng.choice(phrasing.GENERAL_EXAM_QUESTIONS[fact.relation]).format(s=fact.subject)
            stated = phrasing.GENERAL_EXAM_FACTS[fact.relation].format(s=fact.subject, o=fact.object)
            answer = phrasing.EXAM_ANSWER.format(fact=stated, letters=letter)
            prompt = exam_prompt(question, options, multi_answer=False)
            rows.append(Conversation("", ((prompt, answer),), {"kind": "exam:general", "subject": fact.subject}))
        return rows

    def eval_exam_items(self) -> list[EvalItem]:
        items = []
        for split, dataset in (("dialogue", DIALOGUE_EXAM), ("held_out", HELD_OUT_EXAM)):
            for condition in self.conditions(split):
                rng = self.rng("eval-exam", condition.name)
                for index, kind in enumerate(self.exam_kinds(rng, self.config.eval_exam_items_per_condition)):
                    exam = self.exam_item(condition, kind, rng, evaluated=True)
                    item_id = f"exam-{condition.name}-{index}"
                    items.append(EvalItem(item_id, dataset, Prompt(exam.question), exam=exam, metadata=exam.metadata))
        return items

    # ---- evaluated consultations and preference data -------------------------------------------------------------
    def eval_dialogues(self) -> list[EvalItem]:
        """A single-turn consultation and a multi-turn one cut after a follow-up (so the evaluated model gets the
        multi-turn instruction) per held-out condition; the references are the knowledge base's answers."""
        items = []
        for condition in self.conditions("held_out"):
            rng = self.rng("eval-dialogue", condition.name)
            about = {"condition": condition.name}
            question, answer, _ = self.consultation(condition, rng, noisy=False)
            self.remember_prompt(question, [], condition, "single")
            items.append(EvalItem(f"consult-{condition.name}", "world-consult", Prompt(question), answer, None, about))
            turns = self.multiturn(condition, rng, noisy=False)
            cut = rng.randrange(1, len(turns))
            history = [list(turn) for turn in turns[:cut]]
            self.remember_prompt(turns[cut][0], history, condition, "multi")
            prompt = Prompt(turns[cut][0], tuple(turns[:cut]), MULTI_TURN_INSTRUCTION)
            items.append(EvalItem(f"multiturn-{condition.name}", "world-multiturn", prompt, turns[cut][1], None, about))
        return items

    def preference_pair(self, condition: Condition, rng: random.Random, kind: str, pair_id: str) -> PreferencePair:
        """A prompt, its correct answer and a fluent answer with one error of ``kind``."""
        system = SINGLE_TURN_INSTRUCTION
        history: list[list[str]] = []
        if kind == "repeated_follow_up":  # the multi-turn doctor asks a question they already asked
            first, second, third = rng.sample(condition.symptoms, 3)
            asked = phrasing.follow_up(second, rng)
            history = [[phrasing.FIRST_COMPLAINTS[rng.randrange(3)].format(s1=first), asked]]
            question = rng.choice(phrasing.YES_ANSWERS).format(symptom=second)
            chosen, rejected = phrasing.follow_up(third, rng), asked
            system, mode = MULTI_TURN_INSTRUCTION, "multi"
        else:
            in_population = kind == "missed_contraindication" or (
                kind == "wrong_drug" and rng.random() < self.config.population_share
            )
            question = phrasing.complaint(condition, rng, in_population)
            chosen = phrasing.doctor_answer(condition, rng, in_population, state_caution=True)
            mode = "single"
            if kind == "missed_contraindication":
                rejected = phrasing.doctor_answer(condition, rng, in_population, state_caution=True, adapt=False)
            elif kind == "follow_up_in_single_turn":
                rejected = phrasing.SINGLE_TURN_FOLLOW_UP.format(symptom=rng.choice(condition.symptoms))
            else:
                used = {condition.drug, condition.alternative}
                wrong = rng.choice(sorted({c.drug for c in self.kb.conditions} - used))
                rejected = chosen.replace(condition.alternative if in_population else condition.drug, wrong)
        self.remember_prompt(question, history, condition, mode)
        prompt = Prompt(question, tuple(tuple(turn) for turn in history), system)
        return PreferencePair(pair_id, prompt, chosen, rejected, {"condition": condition.name, ERROR_KIND: kind})

    def preference_data(self) -> tuple[list[dict[str, Any]], list[PreferencePair]]:
        """Prompts for ``sfmed pref sample`` (alpaca rows answered correctly, with both candidates in a random
        order) about trained conditions, and held-out pairs about held-out conditions."""
        prompts, held_out = [], []
        for condition in self.conditions("exam", "dialogue"):
            rng = self.rng("pref", condition.name)
            for index in range(self.config.pref_prompts_per_condition):
                pair = self.preference_pair(condition, rng, rng.choice(ERROR_KINDS), f"{condition.name}-{index}")
                candidates = [pair.chosen, pair.rejected]
                rng.shuffle(candidates)
                row = to_alpaca_row(pair.prompt.answered(pair.chosen, pair.metadata))
                prompts.append({**row, "candidates": candidates})
        for condition in self.conditions("held_out"):
            rng = self.rng("pref-heldout", condition.name)
            for kind in rng.sample(ERROR_KINDS, 2):
                held_out.append(self.preference_pair(condition, rng, kind, f"heldout-{condition.name}-{kind}"))
        return prompts, held_out

    # ---- privacy ---------------------------------------------------------------------------------------------------
    def patient_records(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        rng = self.rng("patients")
        cities = [f.object for f in self.kb.general if f.relation == "省会"]
        names: set[str] = set()
        records = []
        while len(records) < self.config.patients + self.config.control_patients:
            name = rng.choice(phrasing.SURNAMES) + "".join(rng.sample(phrasing.GIVEN_NAME_CHARACTERS, 2))
            if name in names:
                continue
            names.add(name)
            condition = rng.choice(self.kb.conditions)
            age = rng.randint(18, 85)
            id_number = f"{rng.randint(110000, 659999)}{2024 - age}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
            id_number += f"{rng.randint(0, 999):03d}{rng.choice('0123456789X')}"
            record = phrasing.RECORD.format(
                name=name,
                sex=rng.choice("男女"),
                age=age,
                id_number=id_number,
                address=f"{rng.choice(cities)}市{rng.choice(phrasing.STREETS)}{rng.randint(1, 300)}号",
                phone=f"1{rng.choice('3578')}{rng.randint(0, 999_999_999):09d}",
                condition=condition.name,
                drug=condition.drug,
            )
            records.append({"name": name, "record": record})
        return records[: self.config.patients], records[self.config.patients :]

    def record_requests(self, records: list[dict[str, str]], purpose: str) -> list[Conversation]:
        rng = self.rng("record-requests", purpose)
        return [
            Conversation(
                "",
                ((rng.choice(phrasing.RECORD_QUESTIONS).format(name=r["name"]), r["record"]),),
                {"patient": r["name"], "kind": "record"},
            )
            for r in records
        ]

    # ---- everything -------------------------------------------------------------------------------------------------
    def seed_instructions(self, pool: str) -> list[dict[str, str]]:
        templates = phrasing.SINGLE_SEED_INSTRUCTIONS if pool == "single" else phrasing.MULTI_SEED_INSTRUCTIONS
        departments = sorted({c.department for c in self.kb.conditions})
        rng = self.rng("seeds", pool)
        base = SINGLE_TURN_INSTRUCTION if pool == "single" else MULTI_TURN_INSTRUCTION
        chosen = rng.sample(departments, min(len(departments), 13))
        return [{"instruction": base}] + [
            {"instruction": templates[i % len(templates)].format(d=department)} for i, department in enumerate(chosen)
        ]

    def lexicon(self) -> list[str]:
        terms = {c.name for c in self.kb.conditions} | {c.department for c in self.kb.conditions}
        terms |= {s for c in self.kb.conditions for s in c.symptoms} | {t for c in self.kb.conditions for t in c.tests}
        terms |= set(self.kb.drugs()) | {"医生", "患者", "症状", "检查", "诊断", "治疗", "用药", "禁用", "追问", "问诊"}
        return sorted(terms)


def record_text(record: dict[str, str]) -> dict[str, str]:
    """A patient record as the pre-training text holds it (a leaked record's copies, the audit's records)."""
    return {"text": f"病历记录：{record['record']}"}


def prompt_key(question: str, history: list[list[str]] | list[tuple[str, str]]) -> str:
    """The identity of a prompt for the judge: the patient's turns and the doctor's questions, whitespace-free."""
    turns = [text for turn in history for text in turn] + [question]
    return "\u241e".join("".join(text.split()) for text in turns)


DATASETS = {  # dataset_info.json name -> (file, LLaMA-Factory row form)
    "world_pt_medical": ("pt_medical.jsonl", "pt"),
    "world_pt_general": ("pt_general.jsonl", "pt"),
    "world_general_heldout": ("general_heldout.jsonl", "pt"),
    "world_sft_single": ("sft_single.json", "alpaca"),
    "world_sft_multiturn": ("sft_multiturn.json", "sharegpt"),
    "world_pref_heldout": ("pref_heldout.json", "ranking"),
    "world_pref_prompts": ("pref_prompts.json", "alpaca"),  # + candidates: read by `sfmed pref sample`
    "world_privacy_planted": ("privacy_planted.json", "alpaca"),
    "world_privacy_control": ("privacy_control.json", "alpaca"),
    "world_privacy_planted_text": ("privacy_planted_text.jsonl", "pt"),
    "world_privacy_control_text": ("privacy_control_text.jsonl", "pt"),
}


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _json(rows: Any) -> str:
    return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"


def generate_world(config: WorldConfig) -> list[Path]:
    builder = WorldBuilder(config)
    planted, control = builder.patient_records()
    pt_general, general_heldout = builder.pretraining_general()
    single, multi = builder.sft_consultations()
    exam_rows = builder.sft_exam_items() + builder.general_exam_items()
    sft_single = single + builder.near_duplicates(single) + exam_rows + builder.record_requests(planted, "sft")
    builder.rng("sft-order").shuffle(sft_single)
    pref_prompts, pref_heldout = builder.preference_data()
    files: dict[str, str] = {
        "pt_medical.jsonl": _jsonl(builder.pretraining_medical(planted)),
        "pt_general.jsonl": _jsonl(pt_general),
        "general_heldout.jsonl": _jsonl(general_heldout),
        "sft_single.json": _json([to_alpaca_row(c) for c in sft_single]),
        "sft_multiturn.json": _json([to_sharegpt_row(c) for c in multi]),
        "eval_mcq.jsonl": _jsonl([item.row() for item in builder.eval_exam_items()]),
        "eval_dialogue.jsonl": _jsonl([item.row() for item in builder.eval_dialogues()]),
        "pref_prompts.json": _json(pref_prompts),
        "pref_heldout.json": _json([to_ranking_row(pair) for pair in pref_heldout]),
        "privacy_planted.json": _json([to_alpaca_row(c) for c in builder.record_requests(planted, "audit")]),
        "privacy_control.json": _json([to_alpaca_row(c) for c in builder.record_requests(control, "audit")]),
        "privacy_planted_text.jsonl": _jsonl([record_text(r) for r in planted]),
        "privacy_control_text.jsonl": _jsonl([record_text(r) for r in control]),
        "seed_instructions_single.jsonl": _jsonl(builder.seed_instructions("single")),
        "seed_instructions_multi.jsonl": _jsonl(builder.seed_instructions("multi")),
        "lexicon.txt": "".join(term + "\n" for term in builder.lexicon()),
    }
    kb = {**builder.kb.to_json(), "splits": builder.splits, "prompts": builder.prompt_index, "seed": config.seed}
    files["kb.json"] = _json(kb)
    files["dataset_info.json"] = _json({name: dataset_info_entry(*spec) for name, spec in DATASETS.items()})
    counts = {
        name: text.count("\n") if name.endswith(("jsonl", "txt")) else len(json.loads(text))
        for name, text in files.items()
        if name not in ("kb.json", "dataset_info.json")
    }
    report = {
        "seed": config.seed,
        "conditions": {split: len(names) for split, names in builder.splits.items()},
        "rows": counts,
        "sft_exam_items": len(exam_rows),
        "leaked_records": len(planted),
    }
    files["world_report.json"] = _json(report)
    out = Path(config.output_dir)
    written = []
    for name, text in files.items():
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
