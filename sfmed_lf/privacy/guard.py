"""Inference-time privacy guard (SF-Med Appendix B, extended to both sides of the model).

Before generating, the guard reads the whole conversation (system message, history, every user turn) and refuses
when either input check reaches its threshold: the paper's hidden-state cosine to a high-risk query, or the
lexical n-gram containment of a high-risk query (robust to punctuation, whitespace and small edits). After
generating, and while streaming, the output check compares the answer with the memorized suffixes; a streamed
answer is held back ``hold_back`` characters so that the stream can be cut, and the secure counterpart served,
before a suffix that starts to appear reaches the client. Thresholds and the hold-back come from the database's
calibration unless set explicitly. The output check also refuses, whatever its threshold, an answer that holds
an identifier of a memorized record (the audit's ``sensitive_pattern``: an ID or phone number written with other
words around it overlaps the suffix too little to reach a threshold, and is the leak that matters most); a stream
is then held back at least the longest such identifier. Every refusal is logged with the check that fired (never
the identifier itself).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.privacy.config import CHECKS
from sfmed_lf.privacy.conversation import GuardedConversation
from sfmed_lf.privacy.database import HighRiskDatabase
from sfmed_lf.privacy.fingerprint import check_same_model
from sfmed_lf.privacy.ngrams import StreamingGrams, best_of
from sfmed_lf.privacy.scoring import NO_SCORE, GuardScorer

logger = logging.getLogger("sfmed_lf.privacy")


def _ensure_log_handler() -> None:
    """Refusals must reach the server's log where nothing configured Python logging (LF configures only its own
    logger); where the application did (a root handler), they go there."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[sfmed privacy] %(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


@dataclass(frozen=True)
class GuardDecision:
    refused_by: str | None  # the check that fired: embedding, lexical or output; None = allowed
    scores: dict[str, float]  # every check that ran
    entry_id: str | None  # the record behind the refusal (a high-risk entry or a protected audited record)
    secure_response: str | None  # served instead, when refused
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per check
    by_identifier: bool = False  # the output check fired on an identifier of the entry, not on the overlap

    @property
    def refused(self) -> bool:
        return self.refused_by is not None


class PrivacyGuard:
    def __init__(
        self,
        database: HighRiskDatabase,
        model: Any,
        tokenizer: Any,
        served_fingerprint: dict[str, Any] | None = None,
        thresholds: dict[str, float | None] | None = None,
        checks: Sequence[str] = CHECKS,
        hold_back: int | None = None,
        log_path: str | None = None,
    ) -> None:
        """``served_fingerprint``: the served model's content fingerprint (fingerprint.py); a database built for
        another model is refused. ``thresholds``/``hold_back``: overrides of the database's calibrated values."""
        if database.dimension != model.config.hidden_size:
            raise DataError(
                f"{database.directory}: the high-risk database holds {database.dimension}-dim embeddings but the "
                f"served model's hidden size is {model.config.hidden_size}: build the database with the model you "
                "serve."
            )
        if served_fingerprint is not None:
            check_same_model(database.directory, database.model, served_fingerprint)
        unknown = sorted(set(checks) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown privacy check(s) {unknown}; choose from {', '.join(CHECKS)}.")
        self.database, self.checks = database, tuple(checks)
        self.scorer = GuardScorer(database, model, tokenizer)
        self.thresholds = {check: database.thresholds.get(check) for check in CHECKS}
        self.thresholds.update({check: value for check, value in (thresholds or {}).items() if value is not None})
        missing = [check for check in self.checks if self.thresholds[check] is None and database.entries]
        if missing:
            raise DataError(f"{database.directory}: no threshold for the {', '.join(missing)} check(s); set them.")
        self.hold_back = database.hold_back if hold_back is None else hold_back
        if "output" in self.checks:  # an identifier must be whole before any of it is released
            self.hold_back = max(self.hold_back, database.longest_identifier)
        self.log_path, self._log_lock = log_path, threading.Lock()
        _ensure_log_handler()

    # ---- input side -------------------------------------------------------------------------------------------
    def check_input(self, messages: Sequence[dict[str, str]], system: str | None = None) -> GuardDecision:
        return self.check_conversations([GuardedConversation.from_messages(messages, system)])[0]

    def check_prompts(self, prompts: Sequence[Prompt]) -> list[GuardDecision]:
        """Input checks of many prompts (formats.conversation.Prompt), in batches."""
        return self.check_conversations([GuardedConversation.from_prompt(prompt) for prompt in prompts])

    def check_conversations(self, conversations: Sequence[GuardedConversation]) -> list[GuardDecision]:
        """Input checks of many conversations, the hidden states computed in batches."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        embedding = [NO_SCORE] * len(conversations)
        if "embedding" in self.checks:
            embedding = self.scorer.embedding_scores(conversations)
            timings["embedding"] = (time.perf_counter() - start) / max(1, len(conversations))
        lexical = [NO_SCORE] * len(conversations)
        if "lexical" in self.checks:
            lexical_start = time.perf_counter()
            lexical = [self.scorer.lexical_score(conversation) for conversation in conversations]
            timings["lexical"] = (time.perf_counter() - lexical_start) / max(1, len(conversations))
        seconds = (time.perf_counter() - start) / max(1, len(conversations))
        decisions = []
        for conversation, scored in zip(conversations, zip(embedding, lexical, strict=True), strict=True):
            by_check = {check: score for check, score in zip(("embedding", "lexical"), scored, strict=True)}
            decision = self._decide(by_check, seconds, timings)
            if decision.refused:
                self._log(decision, "request", conversation.whole_text)
            decisions.append(decision)
        return decisions

    # ---- output side ------------------------------------------------------------------------------------------
    def check_output(self, text: str, request: str = "") -> GuardDecision:
        """The output check of a whole answer; ``request``: the conversation it answers (identifiers it held are
        the requester's own, not a leak)."""
        start = time.perf_counter()
        if "output" not in self.checks:
            return GuardDecision(None, {}, None, None, 0.0)
        decision = self.identifier_decision(text, request)
        if decision is None:
            decision = self._decide({"output": self.scorer.output_score(text)}, 0.0, {})
        seconds = time.perf_counter() - start
        decision = dataclasses.replace(decision, seconds=seconds, timings={"output": seconds})
        if decision.refused:
            self._log(decision, "answer", text)
        return decision

    def identifier_decision(self, text: str, request: str = "") -> GuardDecision | None:
        """A refusal when ``text`` holds a protected identifier (a memorized record's, or with ``protect_identifiers:
        audited`` any audited record's) that ``request`` did not (None: it holds none). No score: the identifier
        decides, not an overlap."""
        if "output" not in self.checks:
            return None
        hit = self.database.identifier_hit(text, request)
        if hit is None:
            return None
        record = hit[1]
        return GuardDecision("output", {}, record["id"], record["secure_response"], by_identifier=True)

    def output_stream(self, request: str = "") -> GuardedStream:
        return GuardedStream(self, request)

    # ---- shared -----------------------------------------------------------------------------------------------
    def _decide(self, scored: dict[str, tuple[float, int | None]], seconds: float, timings: dict) -> GuardDecision:
        scores = {check: score for check, (score, _) in scored.items() if check in self.checks}
        for check in CHECKS:  # the first check that fires decides, in the order of CHECKS
            if check not in scores:
                continue
            score, row = scored[check]
            if row is not None and score >= self.thresholds[check]:
                entry = self.database.entries[row]
                return GuardDecision(check, scores, entry["id"], entry["secure_response"], seconds, timings)
        return GuardDecision(None, scores, None, None, seconds, timings)

    def _log(self, decision: GuardDecision, where: str, text: str) -> None:
        check = decision.refused_by or ""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        scores = ", ".join(f"{name} {score:.3f}" for name, score in decision.scores.items())
        why = (
            "an identifier of the record"
            if decision.by_identifier
            else f"score {decision.scores[check]:.3f} >= threshold {self.thresholds[check]:.3f}"
        )
        logger.warning(
            "refused the %s: %s check fired (%s), record %s; scores: %s; text sha256 %s; %.1f ms",
            where,
            check,
            why,
            decision.entry_id,
            scores,
            digest,
            1e3 * decision.seconds,
        )
        if self.log_path:
            record = {
                "time": time.time(),
                "where": where,
                "check": check,
                "score": decision.scores.get(check),
                "threshold": self.thresholds[check],
                "entry_id": decision.entry_id,
                "by_identifier": decision.by_identifier,
                "scores": decision.scores,
                "text_sha256": digest,
            }
            with self._log_lock:
                Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
                with open(self.log_path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")


class GuardedStream:
    """The output check on a streamed answer: ``push`` each generated piece and send what it returns; the last
    ``hold_back`` characters stay back until ``finish`` (or forever, once the check fires: ``decision`` is set
    and the caller stops generating and serves ``decision.secure_response``)."""

    def __init__(self, guard: PrivacyGuard, request: str = "") -> None:
        self.guard, self.request, self.text, self.released = guard, request, "", 0
        self.enabled = "output" in guard.checks and bool(guard.database.entries or guard.database.protected)
        self.identifier_length = guard.database.longest_identifier
        self._checked_up_to = 0
        self.grams = StreamingGrams(guard.database.output.n)
        self.matched = [0.0] * len(guard.database.entries)
        self.decision: GuardDecision | None = None
        self.seconds = 0.0

    def _update(self, new_grams: set[str]) -> None:
        start = time.perf_counter()
        if self.identifier_length:  # only the text an identifier ending now could span (spaced out: twice as long)
            tail = self.text[-(2 * self.identifier_length + len(self.text) - self._checked_up_to) :]
            self._checked_up_to = len(self.text)
            decision = self.guard.identifier_decision(tail, self.request)
            if decision is not None:
                self.seconds += time.perf_counter() - start
                self.decision = dataclasses.replace(decision, seconds=self.seconds, timings={"output": self.seconds})
                self.guard._log(self.decision, "streamed answer", self.text)
                return
        index = self.guard.database.output
        index.add_matches(self.matched, new_grams)
        score, row = best_of(index.scores_of(self.matched))
        self.seconds += time.perf_counter() - start
        if row is not None and score >= self.guard.thresholds["output"]:
            entry = self.guard.database.entries[row]
            self.decision = GuardDecision(
                "output",
                {"output": score},
                entry["id"],
                entry["secure_response"],
                self.seconds,
                {"output": self.seconds},
            )
            self.guard._log(self.decision, "streamed answer", self.text)

    def push(self, piece: str) -> str:
        """Text that may be sent now ("" once the check has fired)."""
        if self.decision is not None:
            return ""
        self.text += piece
        if self.enabled:
            self._update(self.grams.feed(piece))
            if self.decision is not None:
                return ""
        releasable = max(self.released, len(self.text) - self.guard.hold_back)
        out, self.released = self.text[self.released : releasable], releasable
        return out

    def finish(self) -> str:
        """The held-back rest once generation ended ("" if the check fires on it)."""
        if self.decision is None and self.enabled:
            self._update(self.grams.finish())
        if self.decision is not None:
            return ""
        out, self.released = self.text[self.released :], len(self.text)
        return out
