"""Instruction diversification (SF-Med §3.2, Fig. 2): new system instructions from a local generator
(GLM-4-9B-Chat under ``vllm serve`` in the paper; any OpenAI-compatible endpoint).

The seed instructions are split equally (after a seeded shuffle) into a question bank Q and an answer bank A.
Each round shows the generator ``history_pairs`` dialogue turns — a Q instruction as the user's message, an A
instruction as the reply — then one more Q instruction to expand into ``new_per_round`` new ones. The reply is split
into single instructions, and each is checked (:class:`InstructionCheck`): no undecodable bytes, length,
completeness (closing punctuation, balanced brackets and quotes), addressed to the model (one of
``address_markers``: a system instruction gives the model a role or a request, which fact statements and a small
generator's word salad do not), at least ``min_terms`` medical terms from the lexicon, and no
near-repeat of a known instruction. Accepted instructions go alternately to Q and A; each bank
keeps its ``keep_oldest`` oldest and ``keep_newest`` newest; every ``swap_every`` rounds Q and A trade places.

Everything random is drawn from ``Random(f"{seed}-{round}")`` over the bank state, so a run is deterministic given
the generator's answers. Each round is appended to ``rounds.jsonl`` once answered; a re-run replays the logged
rounds (no request) and continues with the first missing one: kill and re-run loses and doubles nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.data_prep.config import ADDRESS_MARKERS, DiversifyConfig
from sfmed_lf.errors import DataError
from sfmed_lf.formats import fields
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.formats.reading import read_rows, read_text_lines
from sfmed_lf.text.lexicon import Lexicon
from sfmed_lf.text.ngrams import char_ngrams, jaccard
from sfmed_lf.utils.io import atomic_write_text, require_file
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance

GENERATOR_SYSTEM = (
    "你是医疗大模型系统指令的撰写专家。对话中用户每次给出一条系统指令，你写出一条意思相近、表述不同的新指令。"
    "新指令要完整、通顺，以句号结尾，包含具体的医学科室、疾病、症状、检查或用药等专业术语。{pool_rule}"
)
POOL_RULES = {
    "single": "这些指令用于单轮问答：要求模型直接回答患者的问题，不要向患者追问。",
    "multi": "这些指令用于多轮问诊：允许模型在信息不足时向患者追问，但同一个问题绝不重复提问。",
}
EXPAND_REQUEST = "{query}\n\n请参考以上指令，写出{count}条全新的系统指令，每条单独一行，不要解释。"

_LIST_MARKER = re.compile(r"^\s*(?:\d+\s*[.、)）:：]|[（(]\d+[)）]|[-*•·]|第[一二三四五六七八九十\d]+条[:：]?)\s*")
_INLINE_NUMBER = re.compile(r"(?<=[。！？!?])\s*(?=\d+\s*[.、)）])")
_CLOSING = '。！？.!?）)」』”"'
_PAIRS = ("（）", "()", "“”", "「」", "『』", "《》", "【】")


def load_instructions(path: str, option: str = "seeds") -> list[str]:
    """.txt (one per line) or .json/.jsonl rows with a non-empty ``instruction``."""
    require_file(path, option)
    if path.endswith(".txt"):
        instructions = [line.strip() for _, line in read_text_lines(path) if line.strip()]
    else:
        instructions = [fields.text(location, row, "instruction") for location, row in read_rows(path)]
    if not instructions:
        raise DataError(f"{path}: no instructions.")
    return instructions


def split_candidates(reply: str) -> list[str]:
    """The generator's reply as single instructions: one per line, list markers and wrapping quotes removed."""
    candidates = []
    for line in _INLINE_NUMBER.sub("\n", reply).splitlines():
        text = _LIST_MARKER.sub("", line).strip().strip("\"'“”「」").strip()
        if text:
            candidates.append(text)
    return candidates


def addresses_the_model(text: str, markers: tuple[str, ...] | list[str]) -> bool:
    """Whether ``text`` holds one of ``markers`` (no markers: every text does)."""
    return not markers or any(marker in text for marker in markers)


@dataclass
class InstructionCheck:
    lexicon: Lexicon
    min_terms: int
    min_chars: int
    max_chars: int
    max_similarity: float
    address_markers: tuple[str, ...] = ADDRESS_MARKERS  # empty: not checked
    known: list[frozenset[str]] = field(default_factory=list)

    def remember(self, instruction: str) -> None:
        self.known.append(char_ngrams(instruction, 3))

    def rejection(self, text: str) -> str | None:
        """None for an acceptable instruction, else the reason (the report counts them)."""
        if "\ufffd" in text:  # bytes that do not decode: a cut multi-byte character
            return "undecodable_characters"
        if len(text) < self.min_chars:
            return "too_short"
        if len(text) > self.max_chars:
            return "too_long"
        if text[-1] not in _CLOSING or any(text.count(a) != text.count(b) for a, b in _PAIRS):
            return "incomplete"
        if not addresses_the_model(text, self.address_markers):
            return "not_addressed_to_the_model"
        if len(self.lexicon.terms_in(text)) < self.min_terms:
            return "too_few_medical_terms"
        shingles = char_ngrams(text, 3)
        for other in self.known:
            if jaccard(shingles, other) >= self.max_similarity:
                return "repeats_known_instruction"
        return None


@dataclass
class Banks:
    question: list[str]
    answer: list[str]

    @classmethod
    def from_seeds(cls, seeds: list[str], seed: int) -> Banks:
        shuffled = list(seeds)
        random.Random(seed).shuffle(shuffled)
        half = len(shuffled) // 2
        return cls(shuffled[:half], shuffled[half:])

    def add(self, accepted: list[str], keep_oldest: int, keep_newest: int) -> None:
        """Accepted instructions alternately to Q and A; each bank trimmed to its oldest and newest."""
        for index, instruction in enumerate(accepted):
            (self.question if index % 2 == 0 else self.answer).append(instruction)
        for bank in (self.question, self.answer):
            if len(bank) > keep_oldest + keep_newest:
                bank[:] = bank[:keep_oldest] + bank[-keep_newest:]

    def swap(self) -> None:
        self.question, self.answer = self.answer, self.question


# a line of rounds.jsonl (the step's resumable log): what one round asked, the reply and what it kept
ROUND_FIELDS = {
    "round": int,
    "query": str,
    "history": list[list[str]],
    "reply": str,
    "accepted": list[str],
    "rejected": list[dict[str, str]],
}


class DiversifyStep:
    def __init__(self, config: DiversifyConfig) -> None:
        self.config = config
        self.out = Path(config.output_dir)
        self.seeds = load_instructions(config.seeds, "seeds")
        needed = 2 * (config.history_pairs + 1)
        if len(self.seeds) < needed:
            raise DataError(
                f"{config.seeds}: {len(self.seeds)} seed instructions; history_pairs={config.history_pairs} needs "
                f"at least {needed} (two banks of {config.history_pairs + 1})."
            )
        self.lexicon = Lexicon(config.lexicon)
        markers = config.address_markers
        unaddressed = [text for text in self.seeds if not addresses_the_model(text, markers)]
        if unaddressed:  # the markers do not fit these instructions (another language?): every candidate would fail
            raise DataError(
                f"{config.seeds}: {len(unaddressed)} seed instructions contain none of address_markers {markers}, "
                f"e.g. {unaddressed[0]!r}; set address_markers for their language, or [] to skip the check."
            )

    def provenance(self) -> dict[str, Any]:
        settings = asdict(self.config)
        for volatile in ("output_dir", "generator_url", "api_key", "rounds", "request_timeout_s", "max_retries"):
            settings.pop(volatile)
        settings["seeds"] = hashlib.sha256("\n".join(self.seeds).encode()).hexdigest()[:16]
        settings["lexicon"] = self.lexicon.digest
        # order and repeats do not change the check; [] is how logs written before the check was added read
        markers = settings.pop("address_markers")
        if markers:
            settings["address_markers"] = sorted(set(markers))
        return settings

    def round_prompt(self, banks: Banks, round_number: int) -> tuple[list[list[str]], str, list[dict[str, str]]]:
        """(history pairs, query, chat messages) for one round."""
        config = self.config
        rng = random.Random(f"{config.seed}-{round_number}")
        questions = rng.sample(banks.question, config.history_pairs + 1)
        answers = rng.sample(banks.answer, config.history_pairs)
        history = [[q, a] for q, a in zip(questions[:-1], answers, strict=True)]
        query = questions[-1]
        prompt = Prompt(
            EXPAND_REQUEST.format(query=query, count=config.new_per_round),
            tuple((q, a) for q, a in history),
            GENERATOR_SYSTEM.format(pool_rule=POOL_RULES[config.pool]),
        )
        return history, query, prompt.messages()

    def judge_reply(self, check: InstructionCheck, reply: str) -> tuple[list[str], list[dict[str, str]]]:
        accepted, rejected = [], []
        for candidate in split_candidates(reply):
            reason = check.rejection(candidate)
            if reason:
                rejected.append({"text": candidate, "reason": reason})
            else:
                accepted.append(candidate)
                check.remember(candidate)
        return accepted, rejected

    def run(self) -> list[Path]:
        config = self.config
        log_path = self.out / "rounds.jsonl"
        check_provenance(log_path, self.provenance())
        log = ResumableJsonl(log_path, key="round", fields=ROUND_FIELDS, written_by="sfmed data diversify")
        banks = Banks.from_seeds(self.seeds, config.seed)
        check = InstructionCheck(
            self.lexicon,
            config.min_terms,
            config.min_chars,
            config.max_chars,
            config.max_similarity,
            tuple(config.address_markers),
        )
        for seed_instruction in self.seeds:
            check.remember(seed_instruction)
        endpoint = config.endpoint(config.generator_url, config.generator_model)
        pool: list[dict[str, Any]] = [{"instruction": text, "origin": "seed"} for text in self.seeds]
        rejections: Counter[str] = Counter()
        candidates = 0
        try:
            for round_number in tqdm(range(1, config.rounds + 1), desc=f"diversify {config.pool}", unit="round"):
                history, query, messages = self.round_prompt(banks, round_number)
                if round_number in log:
                    record = log.records[str(round_number)]
                    if record["query"] != query or record["history"] != history:
                        raise DataError(f"{log_path}: round {round_number} was asked another prompt; start over.")
                    for instruction in record["accepted"]:
                        check.remember(instruction)
                else:
                    reply = endpoint.complete(
                        messages, temperature=config.temperature, max_tokens=config.max_new_tokens, seed=config.seed
                    )
                    accepted, rejected = self.judge_reply(check, reply)
                    record = {
                        "round": round_number,
                        "query": query,
                        "history": history,
                        "reply": reply,
                        "accepted": accepted,
                        "rejected": rejected,
                    }
                    log.append(record)
                candidates += len(record["accepted"]) + len(record["rejected"])
                rejections.update(item["reason"] for item in record["rejected"])
                pool += [{"instruction": text, "origin": f"round {round_number}"} for text in record["accepted"]]
                banks.add(record["accepted"], config.keep_oldest, config.keep_newest)
                if config.swap_every and round_number % config.swap_every == 0:
                    banks.swap()
        finally:
            endpoint.close()
        accepted_total = len(pool) - len(self.seeds)
        report = {
            "pool": config.pool,
            "generator": {"url": config.generator_url, "model": config.generator_model},
            "rounds": config.rounds,
            "seeds": len(self.seeds),
            "candidates": candidates,
            "accepted": accepted_total,
            "acceptance_rate": accepted_total / candidates if candidates else 0.0,
            "rejected_by_reason": dict(rejections.most_common()),
            "bank_sizes": {"question": len(banks.question), "answer": len(banks.answer)},
            "instructions_in_pool": len(pool),
        }
        written = [self.out / "instructions.jsonl", self.out / "diversify_report.json", log_path]
        atomic_write_text(written[0], "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in pool))
        atomic_write_text(written[1], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
        return written
