"""Options of the ``sfmed data`` steps (LF-style YAML)."""

from __future__ import annotations

from dataclasses import dataclass

from sfmed_lf.serving.chat_client import EndpointOptions

DEDUP_ENGINES = ("native", "datatrove")
DATATROVE_EXECUTORS = ("local", "slurm", "ray")


@dataclass
class DedupConfig:
    """Near-duplicate removal (SF-Med §3.2); the defaults are chosen on ``benchmarks/bench_dedup.py --quality``."""

    datasets: list[str]  # LLaMA-Factory data files (alpaca/sharegpt, SFT or ranking, .json/.jsonl; or {"text"} rows)
    output_dir: str
    ngram: int = 2  # characters per shingle (of the normalised text)
    num_perm: int = 128  # MinHash permutations (signature length)
    threshold: float = 0.72  # exact Jaccard of the shingle sets at which a record is a near-duplicate of a kept one
    bands: int | None = None  # LSH bands of num_perm // bands rows; None: fitted to find pairs at the threshold
    max_scan: int = 200  # kept records one record is compared with per shared bucket (counted when reached)
    seed: int = 1
    num_proc: int = 2  # processes computing signatures (native engine)
    chunk_size: int = 20000  # records per worker task (and per resumable signature file)
    cross_dataset: bool = True  # second pass over the union of what each dataset kept (SF-Med §3.2)
    engine: str = "native"  # native: this process and a pool; datatrove: datatrove's MinHash pipeline stages
    executor: str = "local"  # datatrove executor: local (LocalPipelineExecutor), slurm or ray
    tasks: int = 4  # datatrove tasks of the per-record stages (signatures, candidate texts, filter)
    workers: int = 2  # datatrove local workers (processes) running those tasks
    executor_options: dict | None = None  # extra arguments of SlurmPipelineExecutor / RayPipelineExecutor

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets: name at least one data file.")
        names = [name.rsplit("/", 1)[-1] for name in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"datasets must have distinct file names (outputs are named after them): {names}.")
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must lie in (0, 1].")
        for name in ("ngram", "num_perm", "num_proc", "chunk_size", "max_scan", "tasks", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.bands is not None and not 1 <= self.bands <= self.num_perm:
            raise ValueError(f"bands must lie in [1, num_perm={self.num_perm}].")
        if self.engine not in DEDUP_ENGINES:
            raise ValueError(f"engine must be one of {', '.join(DEDUP_ENGINES)}.")
        if self.executor not in DATATROVE_EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(DATATROVE_EXECUTORS)}.")


MIX_STRATEGIES = ("interleave_under", "interleave_over")


@dataclass
class MixConfig:
    """Continued pre-training mix (SF-Med §3.1): medical and general corpora at a token ratio, through
    LLaMA-Factory's ``mix_strategy`` / ``interleave_probs``."""

    medical: list[str]  # dataset_info.json names of pre-training (text) datasets
    general: list[str]
    output_dir: str
    tokenizer: str  # the model whose tokenizer counts the tokens (the CPT base model)
    dataset_dir: str = "."
    medical_share: float = 1.3  # medical : general tokens; SF-Med used about 1.3B : 1.4B
    general_share: float = 1.4
    mix_strategy: str = "interleave_under"  # under: stop when a source runs out; over: until all have been seen
    train_yaml: str | None = None  # an LF pt YAML to complete with dataset, mix_strategy and interleave_probs
    num_proc: int = 1
    batch_size: int = 1000

    def __post_init__(self) -> None:
        for name in ("medical", "general"):
            value = getattr(self, name)
            setattr(self, name, [value] if isinstance(value, str) else list(value))
            if not getattr(self, name):
                raise ValueError(f"{name}: name at least one pre-training dataset.")
        overlap = set(self.medical) & set(self.general)
        if overlap:
            raise ValueError(f"datasets named as both medical and general: {sorted(overlap)}.")
        if self.medical_share <= 0 or self.general_share <= 0:
            raise ValueError("medical_share and general_share must be positive.")
        if self.mix_strategy not in MIX_STRATEGIES:
            raise ValueError(f"mix_strategy must be one of {', '.join(MIX_STRATEGIES)} (concat ignores the ratio).")
        if self.num_proc < 1 or self.batch_size < 1:
            raise ValueError("num_proc and batch_size must be >= 1.")


POOLS = ("single", "multi")


@dataclass
class DiversifyConfig(EndpointOptions):
    """Instruction diversification (SF-Med §3.2, Fig. 2) for one pool of system instructions."""

    seeds: str  # .jsonl/.json rows with "instruction", or .txt with one instruction per line
    output_dir: str
    generator_url: str  # OpenAI-compatible endpoint, e.g. `vllm serve THUDM/glm-4-9b-chat` -> http://host:8000/v1
    generator_model: str
    pool: str = "single"  # single: answer directly; multi: may ask follow-up questions, never repeat one
    rounds: int = 100
    new_per_round: int = 5  # instructions asked of the generator each round
    history_pairs: int = 5  # question-bank / answer-bank instructions shown as dialogue turns
    keep_oldest: int = 20  # m: a bank keeps its m oldest and n newest instructions
    keep_newest: int = 40  # n
    swap_every: int = 10  # rounds between swaps of the question and answer banks (0: never)
    seed: int = 1
    temperature: float = 0.9
    max_tokens: int = 1024
    lexicon: str | None = None  # one term per line; default: the bundled medical lexicon
    min_terms: int = 2  # medical terms an accepted instruction contains
    min_chars: int = 20
    max_chars: int = 300
    max_similarity: float = 0.6  # character-trigram Jaccard above which a candidate repeats a known instruction

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}.")
        for name in ("rounds", "new_per_round", "history_pairs", "keep_oldest", "keep_newest", "min_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.swap_every < 0 or self.min_terms < 0:
            raise ValueError("swap_every and min_terms must be >= 0.")
        if self.max_chars <= self.min_chars:
            raise ValueError("max_chars must exceed min_chars.")
        if not 0 < self.max_similarity <= 1:
            raise ValueError("max_similarity must lie in (0, 1].")


@dataclass
class AttachConfig:
    """System instructions attached to SFT samples: the single-turn pool for one-turn rows, the multi-turn pool
    for rows with history."""

    datasets: list[str]  # dataset_info.json names (alpaca or sharegpt)
    single_pool: str  # instructions.jsonl written by `sfmed data diversify` (pool single)
    multi_pool: str  # the same for pool multi
    output_dir: str  # files plus a dataset_info.json with a "<name>_diversified" entry each
    dataset_dir: str = "."
    input_dir: str | None = None  # read each file from here by its base name (e.g. `sfmed data dedup` output)
    seed: int = 1
    keep_existing: bool = False  # rows that already have a system prompt keep it

    def __post_init__(self) -> None:
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]
        if not self.datasets:
            raise ValueError("datasets: name at least one SFT dataset.")
