"""LLaMA-Board additions: SF-Med model entries and controls, checks before a run, and visible merging state.

- **Model entries** for every checkpoint the tiny demo and the 7B recipe write (``SF-Med-Tiny-SFT`` =
  ``saves/tiny/sft``, ...), each selecting the ``sfmed`` template; paths are relative to where the Board is
  started.
- **Online merging** accordion (DPO stage) and **Preference audit** accordion (DPO and RM stages) in the Train tab,
  shaped like LLaMA-Factory's GaLore/APOLLO/BAdam accordions. Their controls are generated from the option
  dataclasses in :mod:`sfmed_lf.hparams` (name, default, choices, help), so they follow any change there. They are
  Board elements like LF's own (``train.sfmed_merge_method``, ...): their values reach the generated arguments,
  "Preview command", the run's YAML and the Board's saved configurations. Labels come through LF's locale tables
  (English and Chinese; the other Board languages show English).
- **Checks before a run** ("Preview command", "Save arguments" and "Start" all run them; a problem is shown in the
  log box and as a toast instead of a failing subprocess): the SF-Med options through the hparams classes' own
  validation, the θ paths and the audit file, and a compute type this host can run.
- **Works as it opens**: Data dir defaults to ``.`` in this project's layout; the compute type defaults to one the
  host can run (fp32 without a GPU, with the reason beside the control); datasets whose files are missing are left
  out of the Dataset dropdowns (the count and an example path under the dropdown); a dataset_info.json that cannot
  be read is explained under the dropdown. Not a toast: the Board lists datasets on a non-queued event
  (``dataset.focus(..., queue=False)``), where Gradio prints ``gr.Warning`` to the console only.
- **Visible state**: the DPO run logs the merging settings at the start and the memory τ' holds after the first
  step, to LF's logger, which the Board shows in its log box; at the end the log box shows
  ``sfmed_online_merging.json``.

Heavy imports (gradio, transformers, sfmed_lf.hparams) happen inside the functions: this module is first imported
while ``llamafactory.extras.constants`` executes, before the rest of LLaMA-Factory exists.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any, Literal

from sfmed_lf.templates import SINGLE_TURN_TEMPLATE

# ---------------------------------------------------------------------------------------------- model entries

# What each entry is, named after the step that wrote it (scripts/demo.sh, examples/yaml/sfmed_*.yaml).
SFMED_MODELS = {
    "SF-Med-Tiny-Init": "models/sfmed-tiny",  # the randomly initialised tiny model, before any training
    "SF-Med-Tiny-CPT": "saves/tiny/pt",
    "SF-Med-Tiny-SFT": "saves/tiny/sft",
    "SF-Med-Tiny-DPO-OnDARE": "saves/tiny/dpo",
    "SF-Med-Tiny-DPO-OnTIES": "saves/tiny/dpo_onties",
    "SF-Med-7B-CPT": "saves/sfmed-7b/pt",
    "SF-Med-7B-SFT": "saves/sfmed-7b/sft",
    "SF-Med-7B-DPO": "saves/sfmed-7b/dpo",
}
# θ_base of online merging is the model SFT started from: the CPT model.
BASE_MODEL_EXAMPLE = "SF-Med-Tiny-CPT"
DATASET_INFO = "dataset_info.json"


def register_models(constants: ModuleType) -> str:
    constants.register_model_group(
        models={name: {constants.DownloadSource.DEFAULT: path} for name, path in SFMED_MODELS.items()}
    )
    # LF gives a default template only to names with -Chat/-Instruct/...; every SF-Med step trains with `sfmed`
    # (CPT and the initial model included), so every entry selects it.
    constants.DEFAULT_TEMPLATE.update(dict.fromkeys(SFMED_MODELS, SINGLE_TURN_TEMPLATE))
    return f"model entries {', '.join(SFMED_MODELS)} (template {SINGLE_TURN_TEMPLATE})"


# ------------------------------------------------------------------------------------------------ datasets


def project_dataset_dir(default: str, cwd: Path | None = None) -> str:
    cwd = cwd or Path.cwd()
    if (cwd / DATASET_INFO).is_file() and not (cwd / default / DATASET_INFO).is_file():
        return "."
    return default


def broken_dataset_info_message(dataset_dir: str) -> str | None:
    """Why ``dataset_dir``'s dataset_info.json cannot be used, or None when it is fine or simply absent."""
    path = os.path.join(dataset_dir, DATASET_INFO)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{path} cannot be read: {error}"
    if not isinstance(content, dict):
        return f"{path} must hold a JSON object of dataset name -> definition, not {type(content).__name__}."
    return None


def missing_dataset_files(dataset_dir: str) -> dict[str, str]:
    """Dataset name -> its local file or folder, for the entries whose ``file_name`` is not there.

    Entries loaded from a hub, a script or cloud storage have no ``file_name`` and are never reported.
    """
    try:
        with open(os.path.join(dataset_dir, DATASET_INFO), encoding="utf-8") as handle:
            info = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    missing = {}
    for name, entry in info.items() if isinstance(info, dict) else ():
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if isinstance(file_name, str) and not os.path.exists(os.path.join(dataset_dir, file_name)):
            missing[name] = os.path.normpath(os.path.join(dataset_dir, file_name))
    return missing


def hidden_datasets_note(hidden: dict[str, str]) -> str:
    if not hidden:
        return ""
    example = next(iter(hidden.values()))
    return (
        f"{len(hidden)} dataset(s) not listed: their files are missing (e.g. {example}). Convert or download them "
        "first (`sfmed data convert`)."
    )


def with_dataset_checks(list_datasets: Callable[..., Any], default_dir: str) -> Callable[..., Any]:
    """Wraps the Board's ``list_datasets(dataset_dir, [training_stage])`` event handler (Train and Evaluate tabs)."""

    @functools.wraps(list_datasets)  # Gradio reads the wrapped signature to match the event's inputs
    def list_or_explain(dataset_dir: str | None = None, *args: Any, **kwargs: Any) -> Any:
        import gradio as gr

        directory = dataset_dir if dataset_dir is not None else default_dir
        message = broken_dataset_info_message(directory)
        if message is not None:
            return gr.Dropdown(choices=[], value=[], info=f"⚠ {message}")
        listed = list_datasets(dataset_dir, *args, **kwargs)
        missing = missing_dataset_files(directory)
        names = [value for _label, value in listed.choices]
        hidden = {name: missing[name] for name in names if name in missing}
        return gr.Dropdown(choices=[name for name in names if name not in hidden], info=hidden_datasets_note(hidden))

    list_or_explain.sfmed_lf_wrapped = True
    return list_or_explain


def patch_board_common(common: ModuleType) -> str:
    common.DEFAULT_DATA_DIR = project_dataset_dir(common.DEFAULT_DATA_DIR)
    return f"dataset dir default {common.DEFAULT_DATA_DIR!r}"


def patch_board_control(control: ModuleType) -> str:
    if not getattr(control.list_datasets, "sfmed_lf_wrapped", False):
        control.list_datasets = with_dataset_checks(control.list_datasets, control.DEFAULT_DATA_DIR)
    return "dataset lists leave out missing files and explain a broken dataset_info.json"


# ------------------------------------------------------------------------------ options read from the hparams


@dataclasses.dataclass(frozen=True)
class BoardOption:
    """One ``sfmed_*`` option as the Board shows it; everything but the labels comes from its hparams field."""

    name: str
    kind: type  # bool, int, float or str
    default: Any
    choices: tuple[Any, ...]
    optional: bool  # None is allowed (an empty box)
    help: str


def options_of(arguments_class: type) -> tuple[BoardOption, ...]:
    hints = typing.get_type_hints(arguments_class)
    options = []
    for field in dataclasses.fields(arguments_class):
        hint, optional = hints[field.name], False
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            optional = True
            (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        kind = type(choices[0]) if choices else hint
        if kind not in (bool, int, float, str):
            raise TypeError(f"{arguments_class.__name__}.{field.name}: the Board has no control for {hint}.")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        options.append(BoardOption(field.name, kind, default, choices, optional, field.metadata.get("help", "")))
    return tuple(options)


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """An accordion of the Train tab: its element name, the stages it applies to, and its options."""

    tab: str
    stages: tuple[str, ...]
    switch: str  # the option that turns the group on; the others are sent only when it is set
    off: Any  # the switch's value that means "off"
    after: str  # the LF accordion it follows on the page
    options: tuple[BoardOption, ...]

    def active(self, values: dict[str, Any]) -> bool:
        return values[self.switch] not in (self.off, None, "")


@functools.cache
def option_groups() -> tuple[OptionGroup, ...]:
    from sfmed_lf.hparams import OnlineMergingArguments, PreferenceSelectionArguments
    from sfmed_lf.merging.config import MergeMethod

    return (
        OptionGroup(
            "sfmed_pref_tab",
            ("dpo", "rm"),
            "sfmed_pref_audit",
            None,
            "rlhf_tab",
            options_of(PreferenceSelectionArguments),
        ),
        OptionGroup(
            "sfmed_merge_tab",
            ("dpo",),
            "sfmed_merge_method",
            MergeMethod.NONE.value,
            "badam_tab",
            options_of(OnlineMergingArguments),
        ),
    )


class BoardInputError(ValueError):
    """A value typed on the page that its option cannot take; the message names the control."""


def parse_value(option: BoardOption, raw: Any, label: str) -> Any:
    """The value of ``option`` from what its control holds (a textbox's text, a dropdown's value, a checkbox)."""
    if option.kind is bool:
        return bool(raw)
    text = "" if raw is None else str(raw).strip()
    if not text:
        if option.optional:
            return None
        raise BoardInputError(f"{label}: needs a value.")
    if option.choices:
        for choice in option.choices:
            if str(choice) == text:
                return choice
        raise BoardInputError(f"{label}: {text!r} is not one of {', '.join(map(str, option.choices))}.")
    try:
        return option.kind(text)
    except ValueError:
        kind = {int: "a whole number", float: "a number"}.get(option.kind, option.kind.__name__)
        raise BoardInputError(f"{label}: {text!r} is not {kind}.") from None


def control_text(value: Any) -> str:
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------------------------------- labels

LANGUAGES = ("en", "ru", "zh", "ko", "ja")  # LLaMA-Board's; languages without a text here show the English one
CHOICE_NAMES = {"ondare": "OnDARE", "onties": "OnTIES"}
LABELS: dict[str, dict[str, str]] = {
    "sfmed_merge_tab": {"en": "Online merging (SF-Med)", "zh": "在线合并（SF-Med）"},
    "sfmed_merge_method": {"en": "Merging method", "zh": "合并方法"},
    "sfmed_merge_base_model": {"en": "θ_base: base model", "zh": "θ_base：基座模型"},
    "sfmed_merge_sft_model": {"en": "θ_sft: SFT model", "zh": "θ_sft：SFT 模型"},
    "sfmed_merge_keep_prob": {"en": "Keep probability p", "zh": "保留概率 p"},
    "sfmed_merge_alpha": {"en": "Task-vector weight α", "zh": "任务向量权重 α"},
    "sfmed_merge_rescale": {"en": "Rescale", "zh": "重缩放"},
    "sfmed_merge_seed": {"en": "Mask seed", "zh": "掩码随机种子"},
    "sfmed_merge_check_replicas": {"en": "Check replicas", "zh": "检查副本一致性"},
    "sfmed_pref_tab": {"en": "Preference audit (SF-Med)", "zh": "偏好数据审计（SF-Med）"},
    "sfmed_pref_audit": {"en": "Audit file", "zh": "审计文件"},
    "sfmed_pref_flip_fraction": {"en": "Flip fraction", "zh": "翻转比例"},
    "sfmed_pref_drop_fraction": {"en": "Drop fraction", "zh": "丢弃比例"},
    "sfmed_pref_flip_below": {"en": "Flip below", "zh": "低于此值则翻转"},
    "sfmed_pref_drop_above": {"en": "Drop above", "zh": "高于此值则丢弃"},
}
# Chinese help; the English help is the option's own help text in sfmed_lf.hparams.
ZH_HELP = {
    "sfmed_merge_method": "DPO 中的在线合并：ondare（随机稀疏化）或 onties（按幅值保留前 p 并做符号选举）；"
    "none 使用 LLaMA-Factory 默认优化器。",
    "sfmed_merge_base_model": "θ_base 的路径或 Hub 名称，即 SFT 开始时的模型（τ = θ_sft − θ_base）。"
    "启用在线合并时必填。",
    "sfmed_merge_sft_model": "θ_sft 的路径或 Hub 名称。留空则为正在训练的模型（模型路径）。",
    "sfmed_merge_keep_prob": "p：每次稀疏化保留的元素比例（τ 一次，每次更新一次）。",
    "sfmed_merge_alpha": "α：θ += α·τ' + (1 − α)·Δ' 中任务向量的权重。",
    "sfmed_merge_rescale": "保留元素的缩放方式：authors 与作者代码一致（OnDARE 乘 1/p，OnTIES 不缩放），none 按论文公式"
    "不缩放，inverse_p 均乘 1/p，l1 保持 L1 范数。",
    "sfmed_merge_seed": "稀疏化掩码的随机种子。留空则使用训练的 seed。",
    "sfmed_merge_check_replicas": "多卡数据并行时，训练结束后比较各卡权重的校验和，不一致则报错。",
    "sfmed_pref_audit": "`sfmed pref select` 生成的 audit.jsonl（每对数据的集成打分）；填写后启用翻转/丢弃。",
    "sfmed_pref_flip_fraction": "平均偏好强度最低、标签被翻转的数据对比例。",
    "sfmed_pref_drop_fraction": "平均偏好强度最高、被丢弃的数据对比例。",
    "sfmed_pref_flip_below": "平均偏好强度低于此值的数据对被翻转（取代比例）。",
    "sfmed_pref_drop_above": "平均偏好强度高于此值的数据对被丢弃（取代比例）。",
}
PLACEHOLDERS = {
    "sfmed_merge_base_model": {
        "en": f"e.g. {SFMED_MODELS[BASE_MODEL_EXAMPLE]} ({BASE_MODEL_EXAMPLE}) when training from the SFT model",
        "zh": f"例如 {SFMED_MODELS[BASE_MODEL_EXAMPLE]}（{BASE_MODEL_EXAMPLE}），从 SFT 模型开始训练时",
    },
    "sfmed_merge_sft_model": {"en": "empty: Model path", "zh": "留空：模型路径"},
    "sfmed_pref_audit": {"en": "e.g. saves/tiny/pref/audit.jsonl", "zh": "例如 saves/tiny/pref/audit.jsonl"},
}
MESSAGES: dict[str, dict[str, str]] = {
    "err_sfmed_merge": {"en": "Online merging: ", "zh": "在线合并设置有误："},
    "err_sfmed_pref": {"en": "Preference audit: ", "zh": "偏好数据审计设置有误："},
    "err_sfmed_args": {"en": "Invalid arguments: ", "zh": "参数有误："},
    "err_sfmed_compute_type": {
        "en": "Compute type {chosen} needs a GPU with bf16 support, which this host lacks: choose {works} under "
        "Compute type.",
        "zh": "计算类型 {chosen} 需要支持 bf16 的 GPU，本机没有：请在“计算类型”中选择 {works}。",
    },
    "info_sfmed_no_bf16": {
        "en": " This host has no GPU with bf16 support: {works} is selected.",
        "zh": " 本机没有支持 bf16 的 GPU：已选择 {works}。",
    },
    "info_sfmed_merge_summary": {
        "en": "Online merging summary ({name}):",
        "zh": "在线合并总结（{name}）：",
    },
}


def in_language(texts: dict[str, str], lang: str) -> str:
    return texts.get(lang) or texts["en"]


def label_of(name: str, lang: str) -> str:
    return in_language(LABELS[name], lang) if name in LABELS else name


def option_locale(option: BoardOption, lang: str) -> dict[str, str]:
    info = option.help
    if lang == "zh" and option.name in ZH_HELP:
        info = ZH_HELP[option.name]
        if option.choices:
            info += " 可选：" + "、".join(map(str, option.choices)) + "。"
    entry = {"label": label_of(option.name, lang), "info": info}
    if option.name in PLACEHOLDERS:
        entry["placeholder"] = in_language(PLACEHOLDERS[option.name], lang)
    return entry


def add_sfmed_locales(locales: ModuleType) -> None:
    """Labels and help of the SF-Med controls, and the SF-Med messages, in LF's locale tables (``change_lang``
    relabels every Board element whose name has an entry)."""
    for group in option_groups():
        locales.LOCALES[group.tab] = {lang: {"label": label_of(group.tab, lang)} for lang in LANGUAGES}
        for option in group.options:
            locales.LOCALES[option.name] = {lang: option_locale(option, lang) for lang in LANGUAGES}
    for key, texts in MESSAGES.items():
        locales.ALERTS[key] = {lang: in_language(texts, lang) for lang in LANGUAGES}


# ------------------------------------------------------------------------------------------------ compute type


def compute_type_that_runs() -> str:
    """LLaMA-Board's default bf16 where this host can run it (the same test as transformers' TrainingArguments),
    else fp16 on another accelerator, else fp32."""
    from llamafactory.extras.misc import is_accelerator_available
    from transformers.utils import is_torch_bf16_gpu_available

    if is_torch_bf16_gpu_available():
        return "bf16"
    return "fp16" if is_accelerator_available() else "fp32"


def compute_type_problem(chosen: str, lang: str, alerts: dict[str, dict[str, str]]) -> str:
    works = compute_type_that_runs()
    if "bf16" in chosen and works != "bf16":
        return alerts["err_sfmed_compute_type"][lang].format(chosen=chosen, works=works)
    return ""


# ------------------------------------------------------------------------------------------------ Train tab


def with_sfmed_controls(create_train_tab: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Wraps ``create_train_tab(engine)``: the SF-Med accordions are built first, handed to LF's tab as inputs of
    every event (LF's tab takes its inputs from ``engine.manager.get_base_elems()``), then moved to their places."""

    @functools.wraps(create_train_tab)
    def create_with_sfmed(engine: Any) -> dict[str, Any]:
        import gradio as gr
        from llamafactory.webui import locales

        add_sfmed_locales(locales)

        tabs, controls = {}, {}
        for group in option_groups():
            with gr.Accordion(open=False, visible=False) as tabs[group.tab]:
                # short controls on one row, paths (free text) on another; the group's switch comes first
                fields = [option for option in group.options if option.kind is not str or option.choices]
                texts = [option for option in group.options if option.kind is str and not option.choices]
                for row in (fields, texts) if group.switch in {option.name for option in fields} else (texts, fields):
                    with gr.Row():
                        for option in row:
                            controls[option.name] = new_control(gr, option)
        base_elems = engine.manager.get_base_elems
        engine.manager.get_base_elems = lambda: base_elems() | set(controls.values())
        try:
            elems = create_train_tab(engine)
        finally:
            del engine.manager.get_base_elems  # the instance attribute; the Manager's method shows again
        for group in option_groups():
            place_after(tabs[group.tab], elems[group.after])
        stage = elems["training_stage"]
        stage.change(show_for_stage, [stage], [tabs[group.tab] for group in option_groups()], queue=False)
        select_runnable_compute_type(elems["compute_type"])
        return {**elems, **tabs, **controls}

    create_with_sfmed.sfmed_lf_wrapped = True
    return create_with_sfmed


def new_control(gr: ModuleType, option: BoardOption) -> Any:
    if option.choices:
        choices = [(CHOICE_NAMES.get(str(choice), str(choice)), choice) for choice in option.choices]
        return gr.Dropdown(choices=choices, value=option.default)
    if option.kind is bool:
        return gr.Checkbox(value=option.default)
    return gr.Textbox(value=control_text(option.default), scale=2 if option.kind is str else 1)


def place_after(block: Any, anchor: Any) -> None:
    """Move ``block`` right after ``anchor`` in their common parent (the tab; before its layout is built)."""
    siblings = block.parent.children
    siblings.remove(block)
    siblings.insert(siblings.index(anchor) + 1, block)


def show_for_stage(training_stage: str) -> list[Any]:
    """Each SF-Med accordion is shown for the stages its options apply to."""
    import gradio as gr
    from llamafactory.extras.constants import TRAINING_STAGES

    stage = TRAINING_STAGES[training_stage]
    return [gr.Accordion(visible=stage in group.stages) for group in option_groups()]


def select_runnable_compute_type(compute_type: Any) -> None:
    """Pre-select a compute type this host runs, and say why beside the control (its info line, per language)."""
    from llamafactory.webui.locales import ALERTS, LOCALES

    works = compute_type_that_runs()
    if works == "bf16":
        return
    compute_type.value = works
    for lang, entry in LOCALES["compute_type"].items():
        original = _ORIGINAL_COMPUTE_TYPE_INFO.setdefault(lang, entry.get("info", ""))
        entry["info"] = original + ALERTS["info_sfmed_no_bf16"][lang].format(works=works)


_ORIGINAL_COMPUTE_TYPE_INFO: dict[str, str] = {}  # LF's text, so a second Board in this process adds the note once


# ---------------------------------------------------------------------------------------- Runner: args, checks


def sfmed_values(group: OptionGroup, get: Callable[[str], Any], lang: str) -> dict[str, Any]:
    return {
        option.name: parse_value(option, get(f"train.{option.name}"), label_of(option.name, lang))
        for option in group.options
    }


def sfmed_train_args(args: dict[str, Any], get: Callable[[str], Any]) -> dict[str, Any]:
    """The options of the accordions that apply to this stage and are switched on; raises BoardInputError."""
    lang = get("top.lang") or "en"
    extra_args = json.loads(get("train.extra_args") or "{}")
    added: dict[str, Any] = {}
    for group in option_groups():
        if args["stage"] not in group.stages:
            continue
        values = sfmed_values(group, get, lang)
        if not group.active(values):
            continue
        typed_twice = sorted(set(extra_args) & set(values))
        if typed_twice:
            raise BoardInputError(
                f"{', '.join(typed_twice)} also set in Extra arguments; set them in the "
                f"{label_of(group.tab, lang)} accordion only."
            )
        added.update({name: value for name, value in values.items() if value is not None})
    return added


def with_sfmed_args(parse_train_args: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    @functools.wraps(parse_train_args)
    def parse_with_sfmed(self: Any, data: dict[Any, Any]) -> dict[str, Any]:
        args = parse_train_args(self, data)
        args.update(sfmed_train_args(args, lambda elem_id: data[self.manager.get_elem_by_id(elem_id)]))
        return args

    parse_with_sfmed.sfmed_lf_wrapped = True
    return parse_with_sfmed


def looks_like_local_path(path: str) -> bool:
    """A hub id is exactly ``owner/name``; anything else (absolute, ./, deeper) can only be a local path."""
    return not re.fullmatch(r"[\w.-]+/[\w.-]+", path) or path.startswith(".")


def merging_problem(args: dict[str, Any]) -> str:
    """Why the online-merging options of ``args`` cannot run, by the hparams' own checks, or ""."""
    from sfmed_lf.hparams import SFMedFinetuningArguments

    try:
        build_arguments(SFMedFinetuningArguments, args)
    except ValueError as error:
        return str(error)
    for option in ("sfmed_merge_base_model", "sfmed_merge_sft_model"):
        path = args.get(option)
        if path and not os.path.exists(path) and looks_like_local_path(path):
            return f"{option} {path!r} does not exist (relative to {os.getcwd()})."
    return ""


def preference_problem(args: dict[str, Any]) -> str:
    """Why the preference-audit options of ``args`` cannot run, or "": the hparams' checks, then the audit file read
    and ranked by the loader plugin's own code (a missing file, a bad line, an overlap of flip and drop)."""
    from sfmed_lf.hparams import PreferenceSelectionArguments, SFMedDataArguments
    from sfmed_lf.preference.lf_loader import audit_actions

    try:
        build_arguments(SFMedDataArguments, args)
    except ValueError as error:
        return str(error)
    names = {field.name for field in dataclasses.fields(PreferenceSelectionArguments)}
    try:
        audit_actions(SimpleNamespace(**{name: args.get(name) for name in names}))
    except (OSError, ValueError) as error:  # DataError names the file, the line and the field
        return str(error)
    return ""


def build_arguments(arguments_class: type, args: dict[str, Any]) -> Any:
    names = {field.name for field in dataclasses.fields(arguments_class) if field.init}
    return arguments_class(**{name: value for name, value in args.items() if name in names})


def train_inputs_problem(runner: Any, data: dict[Any, Any]) -> str:
    """What stops this Train-tab configuration from running, in the page's language, or ""."""
    from llamafactory.webui.locales import ALERTS

    def get(elem_id: str) -> Any:
        return data[runner.manager.get_elem_by_id(elem_id)]

    lang = get("top.lang") or "en"
    problem = compute_type_problem(get("train.compute_type"), lang, ALERTS)
    if problem:
        return problem
    try:
        args = runner._parse_train_args(data)
    except BoardInputError as error:
        return ALERTS["err_sfmed_args"][lang] + str(error)
    except (ValueError, TypeError, KeyError) as error:  # LF's own parsing of the page (e.g. a learning rate)
        return ALERTS["err_sfmed_args"][lang] + f"{type(error).__name__}: {error}"
    if args.get("sfmed_merge_method", "none") != "none":
        problem = merging_problem(args)
        if problem:
            return ALERTS["err_sfmed_merge"][lang] + problem
    if args.get("sfmed_pref_audit"):
        problem = preference_problem(args)
        if problem:
            return ALERTS["err_sfmed_pref"][lang] + problem
    return ""


def with_sfmed_checks(initialize: Callable[..., str]) -> Callable[..., str]:
    """Wraps ``Runner._initialize(data, do_train, from_preview)``, which Preview, Save and Start call first."""

    @functools.wraps(initialize)
    def initialize_and_check(self: Any, data: dict[Any, Any], do_train: bool, from_preview: bool) -> str:
        error = initialize(self, data, do_train, from_preview)
        if error or not do_train:
            return error
        return train_inputs_problem(self, data)

    initialize_and_check.sfmed_lf_wrapped = True
    return initialize_and_check


# ---------------------------------------------------------------------------------------------- visible state

MERGE_REPORT_NAME = "sfmed_online_merging.json"  # written by sfmed_lf.train.dpo.trainer


def merging_summary(output_dir: str, lang: str, alerts: dict[str, dict[str, str]]) -> str:
    path = os.path.join(output_dir, MERGE_REPORT_NAME)
    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except (OSError, json.JSONDecodeError):
        return ""
    heading = alerts["info_sfmed_merge_summary"][lang].format(name=MERGE_REPORT_NAME)
    return f"{heading}\n\n```json\n{json.dumps(report, indent=2)}\n```"


def with_merging_summary(monitor: Callable[..., Iterator[dict[Any, Any]]]) -> Callable[..., Iterator[dict[Any, Any]]]:
    """Wraps ``Runner.monitor``: its last update (sent once the run has ended, after ``running`` went False) gets
    the merging summary under the "Finished." line."""

    @functools.wraps(monitor)
    def monitor_with_summary(self: Any) -> Iterator[dict[Any, Any]]:
        from llamafactory.webui.common import get_save_dir
        from llamafactory.webui.locales import ALERTS

        def get(elem_id: str) -> Any:
            return self.running_data[self.manager.get_elem_by_id(elem_id)]

        lang, do_train = get("top.lang") or "en", self.do_train
        output_dir = get_save_dir(get("top.model_name"), get("top.finetuning_type"), get("train.output_dir"))
        output_box = self.manager.get_elem_by_id("train.output_box")
        for update in monitor(self):
            if do_train and not self.running and isinstance(update.get(output_box), str):
                summary = merging_summary(output_dir, lang, ALERTS)
                if summary:
                    status, _, log = update[output_box].partition("\n\n")
                    update[output_box] = f"{status}\n\n{summary}\n\n{log}"
            yield update

    monitor_with_summary.sfmed_lf_wrapped = True
    return monitor_with_summary


def patch_board_runner(runner: ModuleType) -> str:
    cls = runner.Runner
    if not getattr(cls._initialize, "sfmed_lf_wrapped", False):
        cls._initialize = with_sfmed_checks(cls._initialize)
        cls._parse_train_args = with_sfmed_args(cls._parse_train_args)
        cls.monitor = with_merging_summary(cls.monitor)
    return "SF-Med arguments, checks before a run, merging summary in the log box"


def patch_board_train_tab(train: ModuleType) -> str:
    if not getattr(train.create_train_tab, "sfmed_lf_wrapped", False):
        train.create_train_tab = with_sfmed_controls(train.create_train_tab)
    return (
        "Online merging and Preference audit accordions (labels in LOCALES: English, Chinese), a compute type "
        "this host runs"
    )


def merging_state_callback() -> Any:
    """A TrainerCallback that logs the merging settings at the start and τ''s memory after the first step."""
    from transformers import TrainerCallback

    class MergingStateLog(TrainerCallback):
        def __init__(self) -> None:
            self.memory_logged = False

        def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
            merging = merging_optimizer(optimizer)
            if merging is None or not state.is_world_process_zero:
                return
            config = merging.config
            rescale = config.rescale.value
            if config.applied_rescale is not config.rescale:
                rescale += f" ({config.applied_rescale.value} for {config.method.value})"
            merge_logger().info(
                f"SF-Med online merging: method={config.method.value} p={config.keep_prob} alpha={config.alpha} "
                f"rescale={rescale} seed={config.seed}; tau' = sparsified theta_sft - theta_base is built at the "
                "first optimizer step."
            )

        def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
            merging = merging_optimizer(optimizer)
            if merging is None or self.memory_logged or not state.is_world_process_zero:
                return
            self.memory_logged = True
            tau_bytes, merged = merging.persistent_merge_bytes(), merging.merged_numel()
            merge_logger().info(
                f"SF-Med online merging: tau' memory {tau_bytes / 2**20:.3f} MiB on this rank for {merged} merged "
                f"elements ({tau_bytes / (4 * merged) if merged else 0:.3f} of an fp32 copy)."
            )

    return MergingStateLog()


def merging_optimizer(optimizer: Any) -> Any:
    """The online-merging optimizer under accelerate's and DeepSpeed's wrappers, or None."""
    from sfmed_lf.merging.optimizer import OnlineMergingAdamW

    while optimizer is not None and not isinstance(optimizer, OnlineMergingAdamW):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


def merge_logger() -> Any:
    # A child of LF's library logger: LF prints it, and under LLaMA-Board writes it to the run's log box.
    from llamafactory.extras import logging as lf_logging

    return lf_logging.get_logger("llamafactory.sfmed_lf.merging")


def with_merging_state_log(run_dpo: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(run_dpo)
    def run_dpo_logging_merging(model_args, data_args, training_args, finetuning_args, callbacks=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if getattr(finetuning_args, "online_merging_enabled", False):
            callbacks = [*(callbacks or []), merging_state_callback()]
        return run_dpo(model_args, data_args, training_args, finetuning_args, callbacks, *args, **kwargs)

    run_dpo_logging_merging.sfmed_lf_wrapped = True
    return run_dpo_logging_merging


def patch_tuner(tuner: ModuleType) -> str:
    if not getattr(tuner.run_dpo, "sfmed_lf_wrapped", False):
        tuner.run_dpo = with_merging_state_log(tuner.run_dpo)
    return "run_dpo logs the online-merging settings and tau' memory"
