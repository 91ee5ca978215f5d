"""The one place where sfmed-lf touches LLaMA-Factory.

Every LLaMA-Factory symbol the package reads, subclasses or replaces is listed in ``LF_SYMBOLS``; the patches
that act on them are in ``MODULE_PATCHES``, keyed by the module whose execution triggers them. The start-up hook
(``_bootstrap``) calls :func:`on_module_executed` right after such a module runs, so the patches reach every process
that imports LLaMA-Factory: ``llamafactory-cli`` commands, torchrun workers and LLaMA-Board's training subprocess.

Guards: :data:`SUPPORTED_LLAMAFACTORY_VERSION` is checked on the first ``import llamafactory``; the environment
variable ``SFMED_LF_DISABLE=1`` (the kill switch) keeps the hook and every patch out.
"""

from __future__ import annotations

import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from sfmed_lf import _bootstrap

SUPPORTED_LLAMAFACTORY_VERSION = "0.9.5"
KILL_SWITCH_ENV = _bootstrap.KILL_SWITCH_ENV


class UnsupportedLlamaFactoryVersion(ImportError):
    """LLaMA-Factory is installed at a version whose internals sfmed-lf has not been checked against."""


@dataclass(frozen=True)
class LFSymbol:
    module: str
    name: str
    use: str


LF_SYMBOLS: tuple[LFSymbol, ...] = (
    LFSymbol("llamafactory.data.template", "TEMPLATES", "read `qwen`; entries `sfmed`, `sfmed_multiturn` added"),
    LFSymbol("llamafactory.hparams.finetuning_args", "FinetuningArguments", "subclassed: SF-Med options"),
    LFSymbol("llamafactory.hparams.data_args", "DataArguments", "subclassed: preference-selection options"),
    LFSymbol(
        "llamafactory.hparams.parser",
        "_TRAIN_ARGS",
        "items replaced: FinetuningArguments and DataArguments -> SF-Med subclasses",
    ),
    LFSymbol("llamafactory.hparams.parser", "_TRAIN_MCA_ARGS", "item replaced, as _TRAIN_ARGS"),
    LFSymbol("llamafactory.hparams.parser", "_INFER_ARGS", "item replaced, as _TRAIN_ARGS"),
    LFSymbol("llamafactory.hparams.parser", "_EVAL_ARGS", "item replaced, as _TRAIN_ARGS"),
    LFSymbol("llamafactory.extras.constants", "register_model_group", "called: SF-Med model entries"),
    LFSymbol("llamafactory.extras.constants", "DownloadSource", "read: key of the model paths"),
    LFSymbol("llamafactory.extras.constants", "DEFAULT_TEMPLATE", "entries added: SF-Med model entries -> `sfmed`"),
    LFSymbol("llamafactory.webui.common", "DEFAULT_DATA_DIR", "replaced by '.' when started from this project's root"),
    LFSymbol("llamafactory.webui.control", "DEFAULT_DATA_DIR", "read: where list_datasets looks by default"),
    LFSymbol(
        "llamafactory.webui.control",
        "list_datasets",
        "wrapped (components import it after control loads): missing files left out, a broken dataset_info.json "
        "explained",
    ),
    LFSymbol("llamafactory.webui.locales", "LOCALES", "entries added: labels and help of the SF-Med controls (en, zh)"),
    LFSymbol("llamafactory.webui.locales", "ALERTS", "entries added and read: SF-Med messages on the page"),
    LFSymbol(
        "llamafactory.webui.components.train",
        "create_train_tab",
        "wrapped (components/__init__ imports it after train loads): SF-Med accordions, compute type that runs",
    ),
    LFSymbol(
        "llamafactory.webui.manager",
        "Manager",
        "get_base_elems shadowed on the engine's manager while the Train tab is built: SF-Med controls as inputs",
    ),
    LFSymbol(
        "llamafactory.webui.runner",
        "Runner",
        "_initialize, _parse_train_args, monitor wrapped: checks, SF-Med arguments, merging summary in the log box",
    ),
    LFSymbol("llamafactory.webui.common", "get_save_dir", "called: where the Board's run writes"),
    LFSymbol("llamafactory.extras.constants", "TRAINING_STAGES", "read: Board stage name -> stage"),
    LFSymbol("llamafactory.extras.misc", "is_accelerator_available", "called: the compute type this host runs"),
    LFSymbol("llamafactory.extras.logging", "get_logger", "called: merging state in LF's log (the Board's log box)"),
    LFSymbol("llamafactory.train.tuner", "run_dpo", "wrapped: a callback logs the online-merging state"),
    LFSymbol(
        "llamafactory.hparams.parser", "get_infer_args", "wrapped: the privacy guard needs the huggingface backend"
    ),
    LFSymbol(
        "llamafactory.chat.hf_engine",
        "HuggingfaceEngine",
        "__init__/chat/stream_chat wrapped: privacy guard; _process_args wrapped: a stop event ends a cut stream",
    ),
    LFSymbol("llamafactory.api.app", "run_api", "read: API_HOST/API_KEY defaults, the guard's exposure warning"),
    LFSymbol(
        "llamafactory.webui.interface", "run_web_demo", "read: GRADIO_SERVER_NAME default, the guard's exposure warning"
    ),
    LFSymbol("llamafactory.chat.base_engine", "Response", "built: the guard's secure answer"),
    LFSymbol("llamafactory.data.template", "get_template_and_fix_tokenizer", "called: audit prefixes as in training"),
    LFSymbol("llamafactory.hparams", "DataArguments", "built: the template choice of the audit and the pair scorer"),
    LFSymbol(
        "llamafactory.data.processor.processor_utils", "infer_seqlen", "called: reward scores truncate as training"
    ),
    LFSymbol(
        "llamafactory.data.loader",
        "_get_merged_dataset",
        "wrapped: preference flip/drop (sfmed_pref_audit) on the merged ranking dataset",
    ),
    LFSymbol("llamafactory.chat", "ChatModel", "called: in-process sampling of the preference responses"),
    LFSymbol(
        "llamafactory.train.rm.trainer",
        "PairwiseTrainer",
        "_save wrapped: reward models with tied embeddings save (shared tensors found by storage, not id)",
    ),
    LFSymbol(
        "llamafactory.model.loader",
        "load_model",
        "wrapped (llamafactory.model imports it after loader runs): sfmed_dropout for a model built for training",
    ),
    LFSymbol("llamafactory.model.loader", "patch_config", "wrapped in loader's namespace: sets sfmed_dropout"),
    LFSymbol(
        "llamafactory.train.dpo.trainer",
        "CustomDPOTrainer",
        "subclassed and replaced (workflow imports it at call time): online-merging optimizer",
    ),
)


# The modules of this package that import LLaMA-Factory, and why; nothing else may (the import-linter contract
# "only the modules integration.py names import llamafactory" in pyproject.toml lists the same modules).
LF_CLIENT_MODULES: dict[str, str] = {
    "sfmed_lf.integration": "applies the patches of MODULE_PATCHES",
    "sfmed_lf.hparams": "subclasses FinetuningArguments and DataArguments",
    "sfmed_lf.train.dpo.trainer": "subclasses CustomDPOTrainer",
    "sfmed_lf.formats.lf_template": "encodes prompts, conversations and pairs with LF's template and infer_seqlen",
    "sfmed_lf.serving.lf_chat": "answers in process through LF's ChatModel",
    "sfmed_lf.privacy.lf_engine": "builds LF's chat Response for the privacy guard's secure answer",
    "sfmed_lf.board": "LLaMA-Board accordions: LF's locales, components and run arguments",
}


def _patch_templates(module: ModuleType) -> str:
    from sfmed_lf.templates import register_sfmed_templates

    return register_sfmed_templates(module)


def _when_ready(ours: str, module: ModuleType, apply: Callable[[ModuleType], str]) -> str:
    """Apply ``apply(module)`` now, or — when our module ``ours`` is the one importing LLaMA-Factory and so is still
    half-initialised (``python -c "import sfmed_lf.hparams"``) — once ``ours`` has finished: it calls
    :func:`finish_deferred_patches` at its end."""
    importing = sys.modules.get(ours)
    if importing is not None and getattr(importing.__spec__, "_initializing", False):
        _DEFERRED.append((ours, module, apply))
        return f"deferred until {ours} is initialised"
    return apply(module)


def _patch_parser(module: ModuleType) -> str:
    return _when_ready("sfmed_lf.hparams", module, _replace_argument_classes)


def _replace_argument_classes(module: ModuleType) -> str:
    from llamafactory.hparams.data_args import DataArguments
    from llamafactory.hparams.finetuning_args import FinetuningArguments

    from sfmed_lf.hparams import SFMedDataArguments, SFMedFinetuningArguments

    subclasses = {FinetuningArguments: SFMedFinetuningArguments, DataArguments: SFMedDataArguments}
    replaced = []
    for list_name in ("_TRAIN_ARGS", "_TRAIN_MCA_ARGS", "_INFER_ARGS", "_EVAL_ARGS"):
        arg_classes = getattr(module, list_name)
        for index, cls in enumerate(arg_classes):
            if cls in subclasses:
                arg_classes[index] = subclasses[cls]
                replaced.append(f"{list_name}[{cls.__name__}]")
    from sfmed_lf.privacy.lf_engine import require_huggingface_backend

    if not getattr(module.get_infer_args, "sfmed_lf_wrapped", False):
        module.get_infer_args = require_huggingface_backend(module.get_infer_args)
    return f"SF-Med argument classes in {', '.join(replaced) or 'no list (already patched)'}; get_infer_args checked"


def _patch_dpo_trainer(module: ModuleType) -> str:
    return _when_ready("sfmed_lf.train.dpo.trainer", module, _replace_dpo_trainer)


def _replace_dpo_trainer(module: ModuleType) -> str:
    from sfmed_lf.train.dpo.trainer import SFMedDPOTrainer  # binds the original CustomDPOTrainer first

    module.CustomDPOTrainer = SFMedDPOTrainer
    return "CustomDPOTrainer -> SFMedDPOTrainer"


def _patch_model_entries(module: ModuleType) -> str:
    from sfmed_lf.board import register_models

    return register_models(module)


def _patch_board_common(module: ModuleType) -> str:
    from sfmed_lf.board import patch_board_common

    return patch_board_common(module)


def _patch_board_control(module: ModuleType) -> str:
    from sfmed_lf.board import patch_board_control

    return patch_board_control(module)


def _patch_board_train_tab(module: ModuleType) -> str:
    from sfmed_lf.board import patch_board_train_tab

    return patch_board_train_tab(module)


def _patch_board_runner(module: ModuleType) -> str:
    from sfmed_lf.board import patch_board_runner

    return patch_board_runner(module)


def _patch_tuner(module: ModuleType) -> str:
    from sfmed_lf.board import patch_tuner

    return patch_tuner(module)


def _patch_chat_engine(module: ModuleType) -> str:
    from sfmed_lf.privacy.lf_engine import guard_engine

    return guard_engine(module.HuggingfaceEngine)


def _patch_data_loader(module: ModuleType) -> str:
    from sfmed_lf.preference.lf_loader import select_while_loading

    module._get_merged_dataset = select_while_loading(module._get_merged_dataset)
    return "_get_merged_dataset wrapped: preference flip/drop"


def _patch_reward_trainer(module: ModuleType) -> str:
    from sfmed_lf.train.reward_save import save_without_shared_tensors

    module.PairwiseTrainer._save = save_without_shared_tensors(module.PairwiseTrainer._save)
    return "PairwiseTrainer._save wrapped: tied embeddings"


def _patch_model_loader(module: ModuleType) -> str:
    from llamafactory.extras.logging import get_logger

    from sfmed_lf.train.dropout import wrap_load_model, wrap_patch_config

    module.patch_config = wrap_patch_config(module.patch_config)
    module.load_model = wrap_load_model(module.load_model, get_logger("sfmed_lf").info_rank0)
    return "load_model and patch_config wrapped: sfmed_dropout"


MODULE_PATCHES: dict[str, Callable[[ModuleType], str]] = {
    "llamafactory.train.rm.trainer": _patch_reward_trainer,
    "llamafactory.model.loader": _patch_model_loader,
    "llamafactory.data.loader": _patch_data_loader,
    "llamafactory.extras.constants": _patch_model_entries,
    "llamafactory.webui.common": _patch_board_common,
    "llamafactory.webui.control": _patch_board_control,
    "llamafactory.webui.components.train": _patch_board_train_tab,
    "llamafactory.webui.runner": _patch_board_runner,
    "llamafactory.train.tuner": _patch_tuner,
    "llamafactory.data.template": _patch_templates,
    "llamafactory.hparams.parser": _patch_parser,
    "llamafactory.train.dpo.trainer": _patch_dpo_trainer,
    "llamafactory.chat.hf_engine": _patch_chat_engine,
}

# module name -> what its patch did, in this process
APPLIED: dict[str, str] = {}
_DEFERRED: list[tuple[str, ModuleType, Callable[[ModuleType], str]]] = []


def finish_deferred_patches(ours: str) -> None:
    """Apply the patches that waited for our module ``ours`` to finish initialising (see :func:`_when_ready`)."""
    for entry in [entry for entry in _DEFERRED if entry[0] == ours]:
        _DEFERRED.remove(entry)
        APPLIED[entry[1].__name__] = entry[2](entry[1])


def installed_llamafactory_version() -> str | None:
    try:
        return importlib.metadata.version("llamafactory")
    except importlib.metadata.PackageNotFoundError:
        return None


def check_llamafactory_version() -> None:
    found = installed_llamafactory_version()
    if found is not None and found != SUPPORTED_LLAMAFACTORY_VERSION:
        raise UnsupportedLlamaFactoryVersion(
            f"sfmed-lf supports llamafactory=={SUPPORTED_LLAMAFACTORY_VERSION} only, but llamafactory=={found} is "
            f"installed. Install llamafactory=={SUPPORTED_LLAMAFACTORY_VERSION}, or set {KILL_SWITCH_ENV}=1 to "
            "run LLaMA-Factory without the SF-Med plugin."
        )


def on_module_executed(module: ModuleType) -> None:
    """Apply the patch registered for ``module`` once per process (reloads and double activation included)."""
    patch = MODULE_PATCHES.get(module.__name__)
    if patch is None or _bootstrap.is_disabled() or module.__name__ in APPLIED:
        return
    APPLIED[module.__name__] = patch(module)


def activate() -> None:
    """Entry point for explicit activation (the ``llamafactory.plugins`` entry point, or a user's own code).

    Installs the import hook and patches the watched modules that are already imported.
    """
    if not _bootstrap.install():
        return
    check_llamafactory_version()
    for name in MODULE_PATCHES:
        if (module := sys.modules.get(name)) is not None:
            on_module_executed(module)
