"""The privacy guard inside LLaMA-Factory's Hugging Face chat engine (``llamafactory-cli chat|api|webchat``).

Only the Hugging Face backend exposes the served model's hidden states in-process; with ``sfmed_privacy_db`` set,
another backend fails at argument parsing instead of serving unguarded. At start-up the database's model
fingerprint is checked against the served model, and a warning is logged when the server listens beyond
loopback without an API key. Each request: input checks (refused: the secure counterpart, nothing generated);
generation; output check on each answer, or on the stream as it comes (held back, cut on a hit: generation is
stopped through a stopping criterion that LF's argument processing passes to ``generate``).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from sfmed_lf.privacy.conversation import GuardedConversation
from sfmed_lf.privacy.database import HighRiskDatabase
from sfmed_lf.privacy.fingerprint import served_fingerprint
from sfmed_lf.privacy.guard import PrivacyGuard, logger

STOP_EVENT_KWARG = "sfmed_stop_event"  # travels in LF's input_kwargs to the wrapped _process_args


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


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name or an interface address: reachable from elsewhere


def exposure_warning(environ: Mapping[str, str], loaded_modules: Mapping[str, Any]) -> str | None:
    """Why this process's server is reachable beyond this machine without a key, or None. LF reads API_HOST
    (default 0.0.0.0) and API_KEY for ``api``, GRADIO_SERVER_NAME (default 0.0.0.0) and GRADIO_SHARE for
    ``webchat``/``webui``, which have no key."""
    if "llamafactory.api.app" in loaded_modules:
        host = environ.get("API_HOST", "0.0.0.0")
        if not is_loopback(host) and not environ.get("API_KEY"):
            return (
                f"the API server listens on {host} (API_HOST) without API_KEY: anyone who can reach this machine can "
                "query the guarded model. Serve with API_HOST=127.0.0.1, or set API_KEY=<secret> to require a key."
            )
    if "llamafactory.webui.interface" in loaded_modules:
        ipv6 = environ.get("GRADIO_IPV6", "").lower() in ("1", "true", "y")
        host = environ.get("GRADIO_SERVER_NAME", "[::]" if ipv6 else "0.0.0.0")
        if environ.get("GRADIO_SHARE", "").lower() in ("1", "true", "y"):
            return "GRADIO_SHARE is on: the web chat gets a public link and has no key. Unset GRADIO_SHARE."
        if not is_loopback(host):
            return (
                f"the web chat listens on {host} (GRADIO_SERVER_NAME) and has no key: anyone who can reach this "
                "machine can query the guarded model. Serve with GRADIO_SERVER_NAME=127.0.0.1."
            )
    return None


def build_guard(model: Any, tokenizer: Any, model_args: Any, finetuning_args: Any) -> PrivacyGuard:
    database = HighRiskDatabase.load(finetuning_args.sfmed_privacy_db)
    guard = PrivacyGuard(
        database,
        model,
        tokenizer,
        served_fingerprint=served_fingerprint(model_args.model_name_or_path, model_args.adapter_name_or_path),
        thresholds={
            "embedding": finetuning_args.sfmed_privacy_threshold,
            "lexical": finetuning_args.sfmed_privacy_lexical_threshold,
            "output": finetuning_args.sfmed_privacy_output_threshold,
        },
        checks=finetuning_args.sfmed_privacy_check_list,
        hold_back=finetuning_args.sfmed_privacy_hold_back,
        log_path=finetuning_args.sfmed_privacy_log,
    )
    logger.info(
        "guard on: %d high-risk records from %s; checks %s; thresholds %s; streams held back %d characters",
        len(database.entries),
        database.directory,
        ", ".join(guard.checks),
        guard.thresholds,
        guard.hold_back,
    )
    warning = exposure_warning(os.environ, sys.modules)
    if warning:
        logger.warning("%s", warning)
    return guard


def stop_on_event(process_args: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap HuggingfaceEngine._process_args: a threading.Event in input_kwargs becomes a stopping criterion."""

    @functools.wraps(process_args)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        input_kwargs = kwargs.get("input_kwargs", args[-1] if len(args) >= 12 else None)
        event = input_kwargs.pop(STOP_EVENT_KWARG, None) if isinstance(input_kwargs, dict) else None
        gen_kwargs, prompt_length = process_args(*args, **kwargs)
        if event is not None:
            from transformers import StoppingCriteria, StoppingCriteriaList

            class StopWhenSet(StoppingCriteria):
                def __call__(self, input_ids: Any, scores: Any, **_: Any) -> bool:
                    return event.is_set()

            gen_kwargs["stopping_criteria"] = StoppingCriteriaList([StopWhenSet()])
        return gen_kwargs, prompt_length

    return staticmethod(wrapped)


def guard_engine(engine_cls: type) -> str:
    if getattr(engine_cls, "sfmed_lf_guarded", False):
        return "HuggingfaceEngine already guarded"
    original_init, original_chat, original_stream = engine_cls.__init__, engine_cls.chat, engine_cls.stream_chat
    engine_cls._process_args = stop_on_event(engine_cls._process_args)

    @functools.wraps(original_init)
    def __init__(self: Any, model_args: Any, data_args: Any, finetuning_args: Any, generating_args: Any) -> None:
        original_init(self, model_args, data_args, finetuning_args, generating_args)
        self.sfmed_privacy_guard = None
        if getattr(finetuning_args, "sfmed_privacy_db", None):
            self.sfmed_privacy_guard = build_guard(self.model, self.tokenizer, model_args, finetuning_args)

    def secure_response(self: Any, text: str, messages: list[dict[str, str]], system: str | None) -> Any:
        from llamafactory.chat.base_engine import Response

        prompt_ids, _ = self.template.encode_oneturn(
            self.tokenizer, [*messages, {"role": "assistant", "content": ""}], system
        )
        return Response(
            response_text=text,
            response_length=len(self.tokenizer.encode(text, add_special_tokens=False)),
            prompt_length=len(prompt_ids),
            finish_reason="stop",
        )

    @functools.wraps(original_chat)
    async def chat(self: Any, messages: list[dict[str, str]], system: str | None = None, *args: Any, **kwargs: Any):  # noqa: ANN202 - LF's signature
        guard = getattr(self, "sfmed_privacy_guard", None)
        if guard is None:
            return await original_chat(self, messages, system, *args, **kwargs)
        decision = await asyncio.to_thread(guard.check_input, messages, system)
        if decision.refused:
            return [secure_response(self, decision.secure_response, messages, system)]
        responses = await original_chat(self, messages, system, *args, **kwargs)
        request = GuardedConversation.from_messages(messages, system).whole_text
        checked = []
        for response in responses:
            verdict = guard.check_output(response.response_text, request)
            checked.append(
                secure_response(self, verdict.secure_response, messages, system) if verdict.refused else response
            )
        return checked

    @functools.wraps(original_stream)
    async def stream_chat(
        self: Any, messages: list[dict[str, str]], system: str | None = None, *args: Any, **kwargs: Any
    ) -> AsyncGenerator[str, None]:
        guard = getattr(self, "sfmed_privacy_guard", None)
        if guard is None:
            async for piece in original_stream(self, messages, system, *args, **kwargs):
                yield piece
            return
        decision = await asyncio.to_thread(guard.check_input, messages, system)
        if decision.refused:
            yield decision.secure_response
            return
        request = GuardedConversation.from_messages(messages, system).whole_text
        stream, stop = guard.output_stream(request), threading.Event()
        async for piece in original_stream(self, messages, system, *args, **{**kwargs, STOP_EVENT_KWARG: stop}):
            if stream.decision is not None:
                continue  # generation stops at its next token; drain what is already queued
            released = stream.push(piece)
            if stream.decision is not None:
                stop.set()
            elif released:
                yield released
        rest = stream.finish()
        if stream.decision is not None:
            yield ("\n\n" if stream.released else "") + stream.decision.secure_response
        elif rest:
            yield rest

    engine_cls.__init__, engine_cls.chat, engine_cls.stream_chat = __init__, chat, stream_chat
    engine_cls.sfmed_lf_guarded = True
    return "HuggingfaceEngine: privacy guard when sfmed_privacy_db is set"
