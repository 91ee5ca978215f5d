"""The corpora of SF-Med Tables 1 (continued pre-training) and 2 (SFT): where each is published, its raw schema
(:mod:`sfmed_lf.formats.raw`), the stages the paper used it for and the LLaMA-Factory form of each stage. Names
here are accepted wherever a raw schema name is (``sfmed data convert``, ``sfmed eval convert``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.raw import RAW_SCHEMAS, RENAMED_SCHEMAS, RawSchema

CONVERTED_DIR = "data/converted"


@dataclass(frozen=True)
class Corpus:
    name: str
    title: str  # as the paper's tables name it
    raw_schema: str  # a key of sfmed_lf.formats.raw.RAW_SCHEMAS
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


def form_of(corpus: Corpus, stage: str) -> str:
    return "pt" if stage == "pt" else corpus.sft_form


def source_schema(name: str) -> tuple[RawSchema, Corpus | None]:
    """The raw schema of a registered corpus or of a raw schema name (the corpus, when it is one)."""
    if name in CORPORA_BY_NAME:
        corpus = CORPORA_BY_NAME[name]
        return RAW_SCHEMAS[corpus.raw_schema], corpus
    if name in RAW_SCHEMAS:
        return RAW_SCHEMAS[name], None
    if name in RENAMED_SCHEMAS:
        raise DataError(f"raw schema {name!r} is now called {RENAMED_SCHEMAS[name]!r}.")
    known = ", ".join(sorted({*CORPORA_BY_NAME, *RAW_SCHEMAS}))
    raise DataError(f"unknown corpus or raw schema {name!r}; known: {known}.")
