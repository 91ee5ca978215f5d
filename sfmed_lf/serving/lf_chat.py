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


class BatchedSampler:
    """Sampled answers for several prompts per ``generate`` call, prompts encoded by LLaMA-Factory's template as
    its chat engine encodes them (left-padded; generation stops at the template's stop words)."""

    def __init__(self, model_name_or_path: str, template: str, **generation: Any) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from sfmed_lf.formats.lf_template import ChatTemplate

        self.torch, self.generation = torch, generation
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        self.template = ChatTemplate(self.tokenizer, template)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path).to(self.device).eval()

    def sample(self, prompts: list[Prompt], count: int, seed: int) -> list[list[str]]:
        """``count`` answers per prompt; the draws depend on ``seed`` and on the batch."""
        torch, tokenizer = self.torch, self.tokenizer
        encoded = [self.template.prompt_ids(prompt) for prompt in prompts]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        stop = {tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(self.template.template.stop_words or [])}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=True,
                num_return_sequences=count,
                eos_token_id=sorted(stop),
                pad_token_id=pad,
                **self.generation,
            )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        return [[text.strip() for text in texts[i * count : (i + 1) * count]] for i in range(len(prompts))]
