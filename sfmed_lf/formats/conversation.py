"""The one conversation model of the package.

- :class:`Conversation` (system, turns): a system prompt and answered (user, assistant) turns, oldest first — what
  an SFT row holds and what every raw corpus dialogue becomes.
- :class:`Prompt` (system, history, question): what a model is asked — a conversation's answered history and one
  open question. Evaluation items, preference prompts and audit prefixes are prompts.
- :class:`Text`: pre-training prose.

Chat messages (``[{"role", "content"}]``) are built here and nowhere else: :meth:`Prompt.messages` for a model
behind an OpenAI-compatible endpoint, :meth:`Prompt.turn_messages` (no system entry) for LLaMA-Factory's template,
which takes the system prompt apart. ``metadata`` keeps the source fields that are not dialogue text (a
department, a category, an exam's subject) so no source text is lost; it is not shown to the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sfmed_lf.formats.reading import Location

Turn = tuple[str, str]  # (user, assistant)
Message = dict[str, str]

USER_ROLES = frozenset({"user", "human", "patient", "病人", "患者", "问"})
ASSISTANT_ROLES = frozenset({"assistant", "gpt", "doctor", "医生", "答"})


@dataclass(frozen=True)
class Prompt:
    question: str
    history: tuple[Turn, ...] = ()
    system: str = ""

    def turn_messages(self) -> list[Message]:
        """History turns then the question, without the system prompt (LLaMA-Factory's template takes it apart)."""
        messages: list[Message] = []
        for user, assistant in self.history:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return [*messages, {"role": "user", "content": self.question}]

    def messages(self, default_system: str = "") -> list[Message]:
        """OpenAI chat messages: the system prompt (``default_system`` when the prompt has none; no entry when both
        are empty), history, question."""
        system = self.system or default_system
        return [*([{"role": "system", "content": system}] if system else []), *self.turn_messages()]

    def answered(self, answer: str, metadata: Mapping[str, str] | None = None) -> Conversation:
        return Conversation(self.system, (*self.history, (self.question, answer)), dict(metadata or {}))

    def texts(self) -> list[str]:
        """System, then every turn's texts in order: the identity of a prompt by its content."""
        return [self.system, *(text for turn in self.history for text in turn), self.question]


@dataclass(frozen=True)
class Conversation:
    system: str
    turns: tuple[Turn, ...]
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("a conversation has at least one answered turn.")

    @property
    def answer(self) -> str:
        return self.turns[-1][1]

    @property
    def multi_turn(self) -> bool:
        return len(self.turns) > 1

    def prompt(self) -> Prompt:
        """Everything before the last answer."""
        *history, (question, _) = self.turns
        return Prompt(question, tuple(history), self.system)

    def messages(self) -> list[Message]:
        return [*self.prompt().messages(), {"role": "assistant", "content": self.answer}]

    def text(self) -> str:
        """The whole conversation as one text (system prompt and every turn), e.g. for near-duplicate comparison."""
        return "\n".join(part for part in (self.system, *(t for turn in self.turns for t in turn)) if part)

    def dialogue_text(self) -> str:
        """The turns as ``问：…`` / ``答：…`` lines (pre-training form; the system prompt is not part of it)."""
        return "\n".join(f"问：{question}\n答：{answer}" for question, answer in self.turns)


@dataclass(frozen=True)
class Text:
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


def conversation_from_messages(
    location: Location, messages: Iterable[tuple[str, str]], system: str = "", metadata: Mapping[str, str] = {}
) -> Conversation:
    """Role-tagged messages (user/human/patient/病人/问 and assistant/gpt/doctor/医生/答, or ``system``) -> a
    conversation. Consecutive messages of one speaker are joined; a leading assistant message is an error; a
    trailing unanswered user message is kept in ``metadata['unanswered']``, not dropped."""
    merged: list[list[str]] = []
    for role, content in messages:
        if role == "system":
            if merged:
                raise location.error("a system message after the conversation started.")
            system = f"{system}\n{content}" if system else content
            continue
        side = "user" if role in USER_ROLES else "assistant" if role in ASSISTANT_ROLES else None
        if side is None:
            raise location.error(f"unknown role {role!r} in the conversation.")
        if merged and merged[-1][0] == side:
            merged[-1][1] = f"{merged[-1][1]}\n{content}"
        else:
            merged.append([side, content])
    if not merged or merged[0][0] != "user":
        raise location.error("the conversation must open with a user (patient) message.")
    extra = dict(metadata)
    if merged[-1][0] == "user":
        extra["unanswered"] = merged.pop()[1]
    if not merged:
        raise location.error("the conversation has no answered turn.")
    turns = tuple((merged[i][1], merged[i + 1][1]) for i in range(0, len(merged), 2))
    return Conversation(system, turns, extra)
