"""What of a conversation the guard's input checks read: everything the client wrote, not only the last message.

A memorized prompt can be sent whole as the last user turn, split across turns, placed in the system message, or
put in an earlier turn of the history, so the checks see:

- ``client_text``: the system message and every user turn, in order, joined: a prompt split across turns is
  contiguous again (the assistant turns between the pieces are left out);
- ``whole_text``: the system message and every turn (assistant turns too: an API client writes the history);
- ``views``: the texts the hidden-state check embeds: each of the last ``max_turn_views`` user turns, the system
  message, and ``client_text`` when it differs from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfmed_lf.formats.conversation import Prompt

USER_ROLES = ("user", "human", "observation")  # LF's role names for what the client sends


@dataclass(frozen=True)
class GuardedConversation:
    system: str
    turns: tuple[tuple[str, str], ...]  # (role, content) in order
    max_turn_views: int = 4

    @classmethod
    def from_messages(
        cls, messages: Sequence[dict[str, str]], system: str | None = None, max_turn_views: int = 4
    ) -> GuardedConversation:
        """LF's chat engine arguments: messages with a role and a content, the system message separately (a
        leading ``system`` message is taken as the system message too)."""
        system_parts = [system] if system else []
        turns = []
        for message in messages:
            role, content = str(message.get("role", "")), str(message.get("content") or "")
            if role == "system":
                system_parts.append(content)
            else:
                turns.append((role, content))
        return cls("\n".join(system_parts), tuple(turns), max_turn_views)

    @classmethod
    def from_prompt(cls, prompt: Prompt) -> GuardedConversation:
        return cls.from_messages(prompt.turn_messages(), prompt.system)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The turns as LF's chat engine takes them (the system message apart)."""
        return [{"role": role, "content": content} for role, content in self.turns]

    @property
    def user_turns(self) -> list[str]:
        return [content for role, content in self.turns if role in USER_ROLES]

    @property
    def client_text(self) -> str:
        return "\n".join(part for part in (self.system, *self.user_turns) if part.strip())

    @property
    def whole_text(self) -> str:
        return "\n".join(part for part in (self.system, *(content for _, content in self.turns)) if part.strip())

    @property
    def views(self) -> list[str]:
        candidates = [*self.user_turns[-self.max_turn_views :], self.system, self.client_text]
        views: list[str] = []
        for text in candidates:
            if text.strip() and text not in views:
                views.append(text)
        return views
