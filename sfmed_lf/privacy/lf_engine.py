"""The privacy guard inside LLaMA-Factory's Hugging Face chat engine (``llamafactory-cli chat|api|webchat``).

Only the Hugging Face backend exposes the served model's hidden states in-process; with ``sfmed_privacy_db`` set,
another backend fails at argument parsing instead of serving unguarded.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable
from typing import Any

from sfmed_lf.privacy.database import HighRiskDatabase
from sfmed_lf.privacy.guard import PrivacyGuard


def require_huggingface_backend(get_infer_args: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(get_infer_args)
    def checked(*args: Any, **kwargs: Any) -> Any:
        model_args, data_args, finetuning_args, generating_args = get_infer_args(*args, **kwargs)
        backend = str(getattr(model_args.infer_backend, "value", model_args.infer_backend))
        if getattr(finetuning_args, "sfmed_privacy_db", None) and backend != "huggingface":
            raise ValueError(
                f"sfmed_privacy_db needs `infer_backend: huggingface` (got {backend}): the guard embeds each request "
                "with the served model's own hidden states."
            )
        return model_args, data_args, finetuning_args, generating_args

    checked.sfmed_lf_wrapped = True
    return checked


def guard_engine(engine_cls: type) -> str:
    if getattr(engine_cls, "sfmed_lf_guarded", False):
        return "HuggingfaceEngine already guarded"
    original_init, original_chat, original_stream = engine_cls.__init__, engine_cls.chat, engine_cls.stream_chat

    @functools.wraps(original_init)
    def __init__(self: Any, model_args: Any, data_args: Any, finetuning_args: Any, generating_args: Any) -> None:
        original_init(self, model_args, data_args, finetuning_args, generating_args)
        self.sfmed_privacy_guard = None
        if getattr(finetuning_args, "sfmed_privacy_db", None):
            database = HighRiskDatabase.load(finetuning_args.sfmed_privacy_db)
            self.sfmed_privacy_guard = PrivacyGuard(
                database, finetuning_args.sfmed_privacy_threshold, self.model, self.tokenizer
            )

    async def secure_answer(self: Any, messages: list[dict[str, str]], system: str | None) -> Any:
        guard = getattr(self, "sfmed_privacy_guard", None)
        if guard is None:
            return None
        decision = await asyncio.to_thread(guard.check, messages)
        if decision.secure_response is None:
            return None
        from llamafactory.chat.base_engine import Response

        prompt_ids, _ = self.template.encode_oneturn(
            self.tokenizer, [*messages, {"role": "assistant", "content": ""}], system
        )
        return Response(
            response_text=decision.secure_response,
            response_length=len(self.tokenizer.encode(decision.secure_response, add_special_tokens=False)),
            prompt_length=len(prompt_ids),
            finish_reason="stop",
        )

    @functools.wraps(original_chat)
    async def chat(self: Any, messages: list[dict[str, str]], system: str | None = None, *args: Any, **kwargs: Any):  # noqa: ANN202 - LF's signature
        secure = await secure_answer(self, messages, system)
        if secure is not None:
            return [secure]
        return await original_chat(self, messages, system, *args, **kwargs)

    @functools.wraps(original_stream)
    async def stream_chat(
        self: Any, messages: list[dict[str, str]], system: str | None = None, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        secure = await secure_answer(self, messages, system)
        if secure is not None:
            yield secure.response_text
            return
        async for piece in original_stream(self, messages, system, *args, **kwargs):
            yield piece

    engine_cls.__init__, engine_cls.chat, engine_cls.stream_chat = __init__, chat, stream_chat
    engine_cls.sfmed_lf_guarded = True
    return "HuggingfaceEngine: privacy guard when sfmed_privacy_db is set"
