"""LLaMA-Factory rows: reading any dataset_info entry's rows (alpaca, sharegpt or openai formatting, with its
column mapping and tags, ranking or not) into :class:`Conversation`, :class:`PreferencePair` or :class:`Text`, and
writing them in the forms this package produces.

Reading follows LLaMA-Factory 0.9.5's converters (``llamafactory/data/converter.py``) column for column: the
alpaca user turn is ``prompt`` and ``query`` joined by a newline, history and system are read only when the entry
maps them, sharegpt turns alternate user/assistant with the entry's tags. Where LLaMA-Factory logs a warning and
trains on an empty example (a broken role order, a wrong turn count), or crashes, this is an error naming the file,
the line and the field. :func:`row_warnings` lists what LLaMA-Factory would silently ignore (a ``system`` or
``history`` the entry does not map).

Written forms: ``pt`` ``{"text"}``; ``alpaca`` ``{"instruction", "input", "output", "history", "system"}``;
``sharegpt`` ``{"conversations": [{"from", "value"}], "system"}``; ``ranking`` (alpaca ranking)
``{"instruction", "input", "history", "system", "chosen", "rejected"}``. Source fields that are not dialogue text
travel as ``"metadata"`` (LLaMA-Factory ignores the column).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Prompt, Text
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.formats.reading import Location

LFRow = Conversation | PreferencePair | Text

ENTRY_COLUMNS: dict[str, dict[str, Any]] = {
    "pt": {"columns": {"prompt": "text"}},
    "alpaca": {
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "response": "output",
            "history": "history",
            "system": "system",
        }
    },
    "sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations", "system": "system"}},
    "ranking": {
        "ranking": True,
        "columns": {
            "prompt": "instruction",
            "query": "input",
            "chosen": "chosen",
            "rejected": "rejected",
            "history": "history",
            "system": "system",
        },
    },
}
FORMS = tuple(ENTRY_COLUMNS)

_ALPACA_DEFAULTS = {"prompt": "instruction", "query": "input", "response": "output"}
_SHAREGPT_DEFAULTS = {"messages": "conversations"}
_TAG_DEFAULTS = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function",
        "system_tag": "system",
    },
}
_COLUMN_KEYS = ("prompt", "query", "response", "history", "messages", "system", "tools", "chosen", "rejected")
_UNSUPPORTED_COLUMNS = ("images", "videos", "audios", "kto_tag", "tools")


def dataset_info_entry(file_name: str, form: str) -> dict[str, Any]:
    if form not in ENTRY_COLUMNS:
        raise ValueError(f"unknown form {form!r}; known: {', '.join(FORMS)}.")
    return {"file_name": file_name, **ENTRY_COLUMNS[form]}


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset_info.json entry, with LLaMA-Factory's defaults for what it leaves out."""

    name: str
    formatting: str = "alpaca"
    ranking: bool = False
    columns: Mapping[str, str] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    file_name: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)  # the entry as written

    @classmethod
    def parse(cls, name: str, entry: Any, where: str) -> DatasetEntry:
        """``where`` (the dataset_info.json path) prefixes every error."""
        if not isinstance(entry, dict):
            raise DataError(f"{where}: {name}: an entry is a mapping, not {type(entry).__name__}.")
        formatting = entry.get("formatting", "alpaca")
        if formatting not in ("alpaca", "sharegpt", "openai"):
            raise DataError(f"{where}: {name}: formatting {formatting!r} is not alpaca, sharegpt or openai.")
        for key in ("columns", "tags"):
            if not isinstance(entry.get(key, {}), dict) or not all(
                isinstance(v, str) for v in entry.get(key, {}).values()
            ):
                raise DataError(f"{where}: {name}: {key} must map names to column names (text).")
        unsupported = [key for key in _UNSUPPORTED_COLUMNS if key in entry.get("columns", {})]
        if unsupported:
            raise DataError(
                f"{where}: {name}: columns {unsupported} (multimodal, KTO or tools) are not supported here."
            )
        file_name = entry.get("file_name")
        if file_name is not None and not isinstance(file_name, str):
            raise DataError(f"{where}: {name}: file_name must be text.")
        return cls(
            name=name,
            formatting=formatting,
            ranking=bool(entry.get("ranking", False)),
            columns=dict(entry.get("columns", {})),
            tags={**_TAG_DEFAULTS.get(formatting, {}), **entry.get("tags", {})},
            file_name=file_name,
            raw=dict(entry),
        )

    def column(self, key: str) -> str | None:
        defaults = _ALPACA_DEFAULTS if self.formatting == "alpaca" else _SHAREGPT_DEFAULTS
        return self.columns.get(key, defaults.get(key))

    @property
    def kind(self) -> str:
        """``ranking`` (preference pairs), ``text`` (pre-training: alpaca with a prompt column and no response) or
        ``sft`` (conversations)."""
        if self.ranking:
            return "ranking"
        if self.formatting == "alpaca" and "prompt" in self.columns and "response" not in self.columns:
            return "text"
        return "sft"

    def read(self, location: Location, row: dict[str, Any]) -> LFRow:
        """The row as LLaMA-Factory would train on it; anything it would skip, mangle or crash on is an error. The
        row's ``metadata`` mapping (what this package writes beside the columns, LLaMA-Factory ignores it) comes
        back on the sample, so what was written is what is read."""
        if self.kind == "text":
            column = self.columns["prompt"]
            sample: LFRow = Text(_text(location, row, column, allow_empty=False))
        elif self.formatting == "alpaca":
            sample = self._read_alpaca(location, row)
        else:
            sample = self._read_messages(location, row)
        metadata = row.get("metadata")
        if isinstance(metadata, dict) and metadata and not sample.metadata:
            sample = replace(sample, metadata={str(k): str(v) for k, v in metadata.items()})
        return sample

    def _system(self, location: Location, row: dict[str, Any]) -> str:
        column = self.columns.get("system")
        if column is None:
            return ""
        if column not in row:
            raise location.error(
                "missing (the dataset_info entry maps the system prompt to it).", column, "missing_system_key"
            )
        return _text(location, row, column, allow_empty=True, nullable=True)

    def _read_alpaca(self, location: Location, row: dict[str, Any]) -> LFRow:
        history: list[tuple[str, str]] = []
        history_column = self.columns.get("history")
        if history_column and row.get(history_column) is not None:
            turns = row[history_column]
            if not isinstance(turns, list):
                raise location.error("must be a list of [question, answer] pairs.", history_column, "wrong_type")
            for index, turn in enumerate(turns):
                if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                    raise location.error(
                        f"turn {index} is not a [question, answer] pair of texts.", history_column, "wrong_type"
                    )
                if not turn[0].strip() or not turn[1].strip():
                    raise location.error(f"turn {index} has an empty text.", history_column, "empty_turn")
                history.append((turn[0], turn[1]))
        parts = []
        for key in ("prompt", "query"):
            column = self.column(key)
            if column and row.get(column) is not None:
                part = _text(location, row, column, allow_empty=True)
                if part:
                    parts.append(part)
        question = "\n".join(parts)
        if not question.strip():
            where = " and ".join(repr(self.column(k)) for k in ("prompt", "query") if self.column(k))
            raise location.error(f"the question ({where}) is empty or missing.", self.column("prompt"), "empty_turn")
        system = self._system(location, row)
        if self.ranking:
            chosen = _text(location, row, self.column("chosen") or "chosen", allow_empty=False)
            rejected = _text(location, row, self.column("rejected") or "rejected", allow_empty=False)
            return self._pair(location, row, Prompt(question, tuple(history), system), chosen, rejected)
        answer = _text(location, row, self.column("response") or "output", allow_empty=False)
        return Conversation(system, (*history, (question, answer)))

    def _read_messages(self, location: Location, row: dict[str, Any]) -> LFRow:
        column = self.column("messages") or "conversations"
        messages = row.get(column)
        if not isinstance(messages, list) or not messages:
            raise location.error("must be a non-empty list of messages.", column, "wrong_type")
        tags = self.tags
        user, assistant, system_tag = tags["user_tag"], tags["assistant_tag"], tags["system_tag"]
        role_tag, content_tag = tags["role_tag"], tags["content_tag"]
        texts: list[str] = []
        roles: list[str] = []
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                raise location.error(f"message {index} is not an object.", column, "wrong_type")
            role, content = message.get(role_tag), message.get(content_tag)
            if not isinstance(role, str):
                raise location.error(f"message {index} has no {role_tag!r} text.", column, "wrong_type")
            if not isinstance(content, str):
                raise location.error(f"message {index} has no {content_tag!r} text.", column, "wrong_type")
            roles.append(role)
            texts.append(content)
        system = ""
        if roles[0] == system_tag:
            system, roles, texts = texts[0], roles[1:], texts[1:]
        else:
            system = self._system(location, row)
        for index, role in enumerate(roles):
            expected = user if index % 2 == 0 else assistant
            if role in (tags["observation_tag"], tags["function_tag"]):
                raise location.error(
                    f"message {index}: tool turns ({role!r}) are not supported here.", column, "unknown_role"
                )
            if role not in (user, assistant):
                raise location.error(
                    f"message {index}: unknown role {role!r} (expected {user!r} or {assistant!r}).",
                    column,
                    "unknown_role",
                )
            if role != expected:
                raise location.error(
                    f"message {index} is {role!r} where {expected!r} is due (turns alternate, starting with {user!r}).",
                    column,
                    "turn_order",
                )
        for index, text in enumerate(texts):
            if not text.strip():
                raise location.error(f"message {index} is empty.", column, "empty_turn")
        if self.ranking:
            if len(roles) % 2 == 0:
                raise location.error(
                    "a ranking conversation ends with the user's question (odd message count).", column, "turn_order"
                )
            answers = []
            for key in ("chosen", "rejected"):
                answer_column = self.column(key) or key
                answer = row.get(answer_column)
                if not isinstance(answer, dict) or not isinstance(answer.get(content_tag), str):
                    raise location.error(
                        f"must be a message object with {content_tag!r} text.", answer_column, "wrong_type"
                    )
                if answer.get(role_tag) != assistant:
                    raise location.error(
                        f"role {answer.get(role_tag)!r} is not {assistant!r}.", answer_column, "unknown_role"
                    )
                if not answer[content_tag].strip():
                    raise location.error("is empty.", answer_column, "empty_turn")
                answers.append(answer[content_tag])
            history = tuple((texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2))
            return self._pair(location, row, Prompt(texts[-1], history, system), answers[0], answers[1])
        if len(roles) % 2:
            raise location.error("the conversation ends without an answer (odd message count).", column, "turn_order")
        turns = tuple((texts[i], texts[i + 1]) for i in range(0, len(texts), 2))
        return Conversation(system, turns)

    def _pair(self, location: Location, row: dict[str, Any], prompt: Prompt, chosen: str, rejected: str) -> LFRow:
        if chosen.strip() == rejected.strip():
            raise location.error(
                "chosen and rejected are the same answer.", self.column("chosen") or "chosen", "chosen_equals_rejected"
            )
        pair_id = row.get("id")
        pair_id = pair_id if isinstance(pair_id, str) and pair_id else f"{self.name}:{location.line}"
        return PreferencePair(pair_id, prompt, chosen, rejected)

    def warnings(self, row: dict[str, Any]) -> list[tuple[str, str]]:
        """(code, message) for what LLaMA-Factory would silently ignore in a row that reads fine."""
        found = []
        for key in ("system", "history"):
            if self.formatting != "alpaca" and key == "history":
                continue
            if key not in self.columns and row.get(key) not in (None, "", []):
                found.append(
                    (
                        f"{key}_not_mapped",
                        f"the row has {key!r} but the entry does not map it: LLaMA-Factory ignores it.",
                    )
                )
        return found


def infer_entry(name: str, location: Location, row: Any) -> DatasetEntry:
    """The entry a file without a dataset_info.json entry most likely needs, from the shape of its first row:
    ``text`` (pre-training), ``conversations``/``messages`` (sharegpt, from/value or role/content tags),
    ``instruction`` (alpaca, history and system mapped when present); ``chosen``/``rejected`` make it ranking."""
    if not isinstance(row, dict):
        raise location.error(f"expected a JSON object, got {type(row).__name__}.")
    ranking = "chosen" in row and "rejected" in row
    if isinstance(row.get("text"), str) and not ranking:
        return DatasetEntry.parse(name, ENTRY_COLUMNS["pt"], "(inferred)")
    for column in ("conversations", "messages"):
        if isinstance(row.get(column), list):
            first = row[column][0] if row[column] else {}
            openai = isinstance(first, dict) and "role" in first
            entry: dict[str, Any] = {"formatting": "openai" if openai else "sharegpt", "columns": {"messages": column}}
            if "system" in row:
                entry["columns"]["system"] = "system"
            if ranking:
                entry["ranking"] = True
                entry["columns"] |= {"chosen": "chosen", "rejected": "rejected"}
            return DatasetEntry.parse(name, entry, "(inferred)")
    if "instruction" in row:
        columns = dict(ENTRY_COLUMNS["ranking" if ranking else "alpaca"]["columns"])
        for optional in ("history", "system"):
            if optional not in row:
                columns.pop(optional)
        return DatasetEntry.parse(name, {"ranking": ranking, "columns": columns}, "(inferred)")
    raise location.error(
        "cannot tell the form: no 'text', 'conversations', 'messages' or 'instruction' field "
        "(register the file in a dataset_info.json with its columns).",
        code="unknown_form",
    )


def _text(location: Location, row: dict[str, Any], column: str, allow_empty: bool, nullable: bool = False) -> str:
    if column not in row or (row[column] is None and not nullable):
        raise location.error("missing.", column, "missing_field")
    found = row[column]
    if found is None:
        return ""
    if not isinstance(found, str):
        raise location.error(f"must be text, got {type(found).__name__}.", column, "wrong_type")
    if not allow_empty and not found.strip():
        raise location.error("is empty.", column, "empty_turn")
    return found


def whole_text(sample: LFRow) -> str:
    """Every text of a row in order (system prompt and all turns; a pair's prompt, chosen and rejected): what two
    rows are compared on when looking for (near-)duplicates."""
    if isinstance(sample, Text):
        return sample.text
    if isinstance(sample, Conversation):
        return sample.text()
    return "\n".join(part for part in (*sample.prompt.texts(), sample.chosen, sample.rejected) if part)


def _with_metadata(row: dict[str, Any], metadata: Mapping[str, str]) -> dict[str, Any]:
    return {**row, "metadata": dict(metadata)} if metadata else row


def to_text_row(sample: Text | Conversation) -> dict[str, Any]:
    text = sample.text if isinstance(sample, Text) else sample.dialogue_text()
    extra = dict(sample.metadata)
    if isinstance(sample, Conversation) and sample.system:
        extra["system"] = sample.system  # not pre-training text, but not lost either
    return _with_metadata({"text": text}, extra)


def to_alpaca_row(conversation: Conversation) -> dict[str, Any]:
    *history, (question, answer) = conversation.turns
    row = {
        "instruction": question,
        "input": "",
        "output": answer,
        "history": [list(turn) for turn in history],
        "system": conversation.system,
    }
    return _with_metadata(row, conversation.metadata)


def to_sharegpt_row(conversation: Conversation) -> dict[str, Any]:
    messages = [
        {"from": side, "value": text}
        for turn in conversation.turns
        for side, text in zip(("human", "gpt"), turn, strict=True)
    ]
    return _with_metadata({"conversations": messages, "system": conversation.system}, conversation.metadata)


def to_ranking_row(pair: PreferencePair) -> dict[str, Any]:
    row = {
        "id": pair.id,
        "instruction": pair.prompt.question,
        "input": "",
        "history": [list(turn) for turn in pair.prompt.history],
        "system": pair.prompt.system,
        "chosen": pair.chosen,
        "rejected": pair.rejected,
    }
    return _with_metadata(row, pair.metadata)


def render(sample: LFRow, form: str) -> dict[str, Any]:
    """One row of ``form`` (pt, alpaca, sharegpt, ranking)."""
    if form == "pt" and not isinstance(sample, PreferencePair):
        return to_text_row(sample)
    if form == "ranking" and isinstance(sample, PreferencePair):
        return to_ranking_row(sample)
    if form in ("alpaca", "sharegpt") and isinstance(sample, Conversation):
        return to_alpaca_row(sample) if form == "alpaca" else to_sharegpt_row(sample)
    kind = {Text: "pre-training text", Conversation: "a conversation", PreferencePair: "a preference pair"}
    raise DataError(f"{kind[type(sample)]} has no {form} form.")
