"""Token ids of prompts, conversations and preference pairs rendered by LLaMA-Factory's own chat template, as
training renders them — so a model is evaluated, audited and scored on the tokens it was trained on.

- a generation prompt: ``encode_oneturn`` of the prompt's turns plus an empty assistant turn, exactly what
  LLaMA-Factory's chat engines (``llamafactory-cli chat|api``) feed the model;
- a conversation: (prompt ids, answer ids), as supervised training encodes its last turn;
- a preference pair: (prompt + chosen, prompt + rejected), with LLaMA-Factory's ``infer_seqlen`` truncation at
  ``cutoff_len`` and EOS for efficient-EOS templates, as the pairwise (RM, DPO) preprocessing does.

This module is one of the few that import LLaMA-Factory (``sfmed_lf.integration.LF_CLIENT_MODULES``).
"""

from __future__ import annotations

from typing import Any

from sfmed_lf.formats.conversation import Conversation, Prompt
from sfmed_lf.formats.pairs import PreferencePair


class ChatTemplate:
    def __init__(self, tokenizer: Any, name: str) -> None:
        from llamafactory.data.template import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments

        self.tokenizer, self.name = tokenizer, name
        self.template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=name))

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The generation prompt (system, history, question, then the assistant's header)."""
        messages = [*prompt.turn_messages(), {"role": "assistant", "content": ""}]
        ids, _ = self.template.encode_oneturn(self.tokenizer, messages, prompt.system or None)
        return ids

    def conversation_ids(self, conversation: Conversation) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of the conversation's last turn, its history and system prompt included."""
        messages = [*conversation.prompt().turn_messages(), {"role": "assistant", "content": conversation.answer}]
        return self.template.encode_oneturn(self.tokenizer, messages, conversation.system or None)

    def pair_ids(self, pair: PreferencePair, cutoff_len: int) -> tuple[list[int], list[int], bool]:
        """(prompt + chosen ids, prompt + rejected ids, whether they were cut to ``cutoff_len``)."""
        from llamafactory.data.processor.processor_utils import infer_seqlen

        system = pair.prompt.system or None
        turns = pair.prompt.turn_messages()
        prompt_ids, chosen = self.template.encode_oneturn(
            self.tokenizer, [*turns, {"role": "assistant", "content": pair.chosen}], system
        )
        _, rejected = self.template.encode_oneturn(
            self.tokenizer, [*turns, {"role": "assistant", "content": pair.rejected}], system
        )
        if self.template.efficient_eos:
            chosen, rejected = [*chosen, self.tokenizer.eos_token_id], [*rejected, self.tokenizer.eos_token_id]
        longer = max(len(chosen), len(rejected))
        source_len, target_len = infer_seqlen(len(prompt_ids), longer, cutoff_len)
        cut = len(prompt_ids) + longer > cutoff_len
        prompt_ids = prompt_ids[:source_len]
        return prompt_ids + chosen[:target_len], prompt_ids + rejected[:target_len], cut
