"""The corpora of SF-Med Tables 1 (continued pre-training) and 2 (SFT): where each is published, its raw format,
and the ``dataset_info.json`` entries that register its converted files (and, where LLaMA-Factory can read the
published hub files directly, a ``sfmed_hub_*`` entry with the column mapping).

``dataset_info.json`` at the project root is generated from this table (``sfmed data registry --write``); a test
checks that the two agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError

CONVERTED_DIR = "data/converted"


@dataclass(frozen=True)
class Corpus:
    name: str
    title: str  # as the paper's tables name it
    raw_format: str  # a key of sfmed_lf.data_prep.converters.RAW_FORMATS
    source: str  # hub id, repository or "local"
    stages: tuple[str, ...]  # "pt" (Table 1) and/or "sft" (Table 2)
    sft_form: str = "alpaca"  # sharegpt for multi-turn corpora
    medical: bool = True  # general corpora are mixed in against forgetting (§3.1)
    hub_columns: dict[str, Any] = field(default_factory=dict)  # LF reads the hub files directly with these

    def entry_name(self, stage: str) -> str:
        return f"sfmed_{stage}_{self.name}"

    def converted_file(self, stage: str) -> str:
        return f"{CONVERTED_DIR}/{stage}/{self.name}.jsonl"


CORPORA: tuple[Corpus, ...] = (
    Corpus("medical_books", "medical books", "plain_text", "local", ("pt",)),
    Corpus("cmtmedqa", "CMtMedQA", "alpaca", "hf:Suprit/CMtMedQA", ("pt",)),
    Corpus(
        "chatmed_consult",
        "ChatMed-Consult",
        "query_response",
        "hf:michaelwzhu/ChatMed_Consult_Dataset",
        ("pt", "sft"),
        hub_columns={"columns": {"prompt": "query", "response": "response"}},
    ),
    Corpus(
        "disc_med_sft",
        "DISC-Med-SFT",
        "conversation",
        "hf:Flmc/DISC-Med-SFT",
        ("pt", "sft"),
        sft_form="sharegpt",
        hub_columns={
            "formatting": "sharegpt",
            "columns": {"messages": "conversation"},
            "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
        },
    ),
    Corpus(
        "meddiag",
        "MedDiag (MedDialog-CN)",
        "meddialog_cn",
        "github:UCSD-AI4H/Medical-Dialogue-System",
        ("pt", "sft"),
        sft_form="sharegpt",
    ),
    Corpus("cmedqa2", "cMedQA-V2.0", "cmedqa2", "github:zhangsheng93/cMedQA2", ("pt",)),
    Corpus(
        "huatuo_sft",
        "huatuo-sft-train-data",
        "huatuo_sft",
        "hf:FreedomIntelligence/HuatuoGPT-sft-data-v1",
        ("pt", "sft"),
        sft_form="sharegpt",
    ),
    Corpus("webmedqa", "webMedQA", "webmedqa", "github:hejunqing/webMedQA", ("pt",)),
    Corpus(
        "chinese_medical_dialogue",
        "Chinese-medical-dialogue-data",
        "toyhom_csv",
        "github:Toyhom/Chinese-medical-dialogue-data",
        ("pt",),
    ),
    Corpus("shennong_tcm", "ShenNong-TCM", "query_response", "hf:michaelwzhu/ShenNong_TCM_Dataset", ("pt",)),
    Corpus(
        "huatuo_kgqa",
        "huatuo-knowledge-graph-qa",
        "huatuo_kgqa",
        "hf:FreedomIntelligence/huatuo_knowledge_graph_qa",
        ("pt",),
    ),
    Corpus("cmexam", "CMExam", "cmexam", "github:williamliujl/CMExam", ("pt", "sft")),
    Corpus("cmb_exam", "CMB-Exam", "cmb_exam", "hf:FreedomIntelligence/CMB", ("pt",)),
    Corpus("promptcblue", "PromptCBLUE", "promptcblue", "github:michael-wzhu/PromptCBLUE", ("pt", "sft")),
    Corpus("crawled_articles", "crawled medical articles", "plain_text", "local", ("pt",)),
    Corpus("paper_abstracts", "medical paper abstracts", "plain_text", "local", ("pt",)),
    *(
        Corpus(name, name, name, "github:brightmart/nlp_chinese_corpus", ("pt",), medical=False)
        for name in ("baike2018qa", "webtext2019zh", "wiki2019zh")
    ),
    Corpus(
        "alpaca_zh",
        "alpaca-zh",
        "alpaca",
        "hf:shibing624/alpaca-zh",
        ("sft",),
        medical=False,
        hub_columns={"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    ),
    Corpus(
        "belle_multiturn",
        "BelleGroup/multiturn_chat_0.8M",
        "belle_multiturn",
        "hf:BelleGroup/multiturn_chat_0.8M",
        ("sft",),
        sft_form="sharegpt",
        medical=False,
    ),
    Corpus(
        "belle_train_0_5m",
        "BelleGroup/train_0.5M_CN",
        "alpaca",
        "hf:BelleGroup/train_0.5M_CN",
        ("sft",),
        medical=False,
        hub_columns={"columns": {"prompt": "instruction", "query": "input", "response": "output"}},
    ),
)

CORPORA_BY_NAME = {corpus.name: corpus for corpus in CORPORA}

FORM_COLUMNS: dict[str, dict[str, Any]] = {
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
}


def form_of(corpus: Corpus, stage: str) -> str:
    return "pt" if stage == "pt" else corpus.sft_form


def dataset_info_entry(file_name: str, form: str) -> dict[str, Any]:
    return {"file_name": file_name, **FORM_COLUMNS[form]}


def registry_entries() -> dict[str, dict[str, Any]]:
    """Every registry entry of dataset_info.json, in table order."""
    entries: dict[str, dict[str, Any]] = {}
    for corpus in CORPORA:
        for stage in corpus.stages:
            entries[corpus.entry_name(stage)] = dataset_info_entry(corpus.converted_file(stage), form_of(corpus, stage))
        if corpus.hub_columns:
            hub_id = corpus.source.removeprefix("hf:")
            entries[f"sfmed_hub_{corpus.name}"] = {"hf_hub_url": hub_id, **corpus.hub_columns}
    return entries


def merged_dataset_info(current: dict[str, Any]) -> dict[str, Any]:
    """``current`` (the bundled and user entries, in their order) with the registry entries set to this table."""
    generated = registry_entries()
    return {**{name: entry for name, entry in current.items() if name not in generated}, **generated}


def local_dataset_entry(dataset_dir: str, name: str, remote_hint: str) -> tuple[Path, dict[str, Any]]:
    """(dataset_info.json path, entry) of a dataset registered with a local ``file_name`` in ``dataset_dir``;
    ``remote_hint`` completes the error for an entry without one (a hub dataset)."""
    info_path = Path(dataset_dir) / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{info_path}: cannot read ({error}).") from error
    if name not in info:
        raise DataError(f"{info_path}: no dataset {name!r}.")
    if "file_name" not in info[name]:
        raise DataError(f"{info_path}: {name}: {remote_hint}")
    return info_path, info[name]
