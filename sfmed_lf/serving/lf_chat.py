"""A model answering in process through LLaMA-Factory's ``ChatModel`` (Hugging Face or vLLM engine) with its chat
template, as ``llamafactory-cli chat`` would. One of the few modules that import LLaMA-Factory
(``sfmed_lf.integration.LF_CLIENT_MODULES``)."""

from __future__ import annotations

from typing import Any

from sfmed_lf.formats.conversation import Prompt


class InProcessChatModel:
    def __init__(self, model_name_or_path: str, template: str, backend: str, seed: int, **generation: Any) -> None:
        from llamafactory.chat import ChatModel
        from transformers import set_seed

        set_seed(seed)
        self.model = ChatModel(
            {"model_name_or_path": model_name_or_path, "template": template, "infer_backend": backend, **generation}
        )

    def answers(self, prompt: Prompt, count: int) -> list[str]:
        """``count`` sampled answers to ``prompt`` (the template's default system prompt when it has none)."""
        responses = self.model.chat(prompt.turn_messages(), system=prompt.system or None, num_return_sequences=count)
        return [response.response_text for response in responses]
