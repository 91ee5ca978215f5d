"""SF-Med chat templates: Qwen2/2.5's ChatML format with SF-Med's doctor instructions as default system prompts.

SF-Med (§3.2) trains with two kinds of system instruction: single-turn consultations where the model answers
directly, and multi-turn consultations where it may ask follow-up questions but never repeats one. Both templates
reuse LLaMA-Factory's own ``qwen`` template object, so encoding, stop words and tool formats stay identical.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

SINGLE_TURN_TEMPLATE = "sfmed"
MULTI_TURN_TEMPLATE = "sfmed_multiturn"

SINGLE_TURN_INSTRUCTION = (
    "你是一名经验丰富的临床医生。请根据患者描述的症状和问题，直接给出专业、准确、通俗易懂的回答："
    "说明可能的原因、建议的检查或处理方式，以及需要尽快就医的情况。不要向患者追问。"
)
MULTI_TURN_INSTRUCTION = (
    "你是一名经验丰富的临床医生，正在与患者进行多轮问诊。信息不足时，每次可以提出一到两个有针对性的追问，"
    "了解症状、病史和用药情况；已经问过或患者已经回答过的问题不要重复提问。"
    "信息足够后，给出专业、准确、通俗易懂的分析和建议。"
)

# Multiple-choice questions as models are asked them (SF-Med §4.5) — in evaluation and in generated training items.
SINGLE_ANSWER_PROMPT = "以下是一道单项选择题，请选出唯一正确的答案，并以“答案：X”的格式给出。\n\n{question}\n{options}"
MULTI_ANSWER_PROMPT = "以下是一道多项选择题，请选出所有正确的答案，并以“答案：XY”的格式给出。\n\n{question}\n{options}"


def exam_prompt(question: str, options: dict[str, str], multi_answer: bool) -> str:
    lines = "\n".join(f"{letter}. {text}" for letter, text in sorted(options.items()))
    template = MULTI_ANSWER_PROMPT if multi_answer else SINGLE_ANSWER_PROMPT
    return template.format(question=question.strip(), options=lines)


SYSTEM_PROMPTS = {SINGLE_TURN_TEMPLATE: SINGLE_TURN_INSTRUCTION, MULTI_TURN_TEMPLATE: MULTI_TURN_INSTRUCTION}
BASE_TEMPLATE = "qwen"


def register_sfmed_templates(template_module: ModuleType) -> str:
    """Add the SF-Med templates to ``llamafactory.data.template.TEMPLATES`` (idempotent)."""
    templates = template_module.TEMPLATES
    base = templates[BASE_TEMPLATE]
    for name, system_prompt in SYSTEM_PROMPTS.items():
        templates.setdefault(name, dataclasses.replace(base, default_system=system_prompt))
    return f"templates {', '.join(SYSTEM_PROMPTS)} (based on `{BASE_TEMPLATE}`)"
