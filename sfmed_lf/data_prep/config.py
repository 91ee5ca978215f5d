"""Options of the ``sfmed data`` steps (``sfmed data STEP -h`` lists them with their help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from sfmed_lf.errors import DataError
from sfmed_lf.formats.datasets import local_dataset
from sfmed_lf.serving.chat_client import EndpointOptions
from sfmed_lf.steps import StepConfig, option

DEDUP_ENGINES = ("native", "datatrove")
DATATROVE_EXECUTORS = ("local", "slurm", "ray")
DATASETS_HELP = "dataset_info.json names (in dataset_dir) of the datasets to read, in order."
DATASET_DIR_HELP = "Directory holding dataset_info.json (as LLaMA-Factory's dataset_dir)."


def _names(value: list[str] | str, option_name: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names:
        raise ValueError(f"{option_name}: name at least one dataset.")
    if len(set(names)) != len(names):
        raise ValueError(f"{option_name}: a dataset is named twice.")
    return names


@dataclass
class DedupConfig(StepConfig):
    """Near-duplicate removal (SF-Med §3.2); the defaults are chosen on ``benchmarks/bench_dedup.py --quality``."""

    output_dir: str = option(
        help="Kept rows per dataset (same file name and format), removed.jsonl, dedup_report.json and a "
        "dataset_info.json registering the kept files under the datasets' names."
    )
    datasets: list[str] = option(
        default_factory=list, help=DATASETS_HELP + " Each is deduplicated, then all against each other."
    )
    dataset_dir: str = option(".", help=DATASET_DIR_HELP)
    ngram: int = option(2, help="Characters per shingle (of the normalised text).")
    num_perm: int = option(128, help="MinHash permutations (signature length).")
    threshold: float = option(0.72, help="Jaccard of the shingle sets at which a record is a near-duplicate.")
    bands: int | None = option(None, help="LSH bands of num_perm // bands rows; null: fitted to the threshold.")
    max_scan: int = option(200, help="Kept records one record is compared with per shared bucket (counted).")
    seed: int = option(1, help="Seed of the MinHash permutations.")
    num_proc: int = option(2, help="Processes computing signatures (native engine).")
    chunk_size: int = option(20000, help="Records per worker task (and per resumable signature file).")
    cross_dataset: bool = option(True, help="Second pass over the union of what each dataset kept (SF-Med §3.2).")
    engine: Literal["native", "datatrove"] = option(
        "native", help="native: this process and a pool; datatrove: datatrove's MinHash pipeline stages."
    )
    executor: Literal["local", "slurm", "ray"] = option("local", help="datatrove executor: local, slurm or ray.")
    tasks: int = option(4, help="datatrove tasks of the per-record stages (signatures, candidate texts, filter).")
    workers: int = option(2, help="datatrove local workers (processes) running those tasks.")
    executor_options: dict[str, Any] | None = option(
        None, help="Extra arguments of SlurmPipelineExecutor / RayPipelineExecutor."
    )
    # resolved from datasets by resolve(); a program (tests, benchmarks) may give data files directly
    files: list[str] = field(default_factory=list, metadata={"internal": True})
    entries: list[dict[str, Any]] = field(default_factory=list, metadata={"internal": True})

    def __post_init__(self) -> None:
        if not 0 < self.threshold <= 1:
            raise ValueError("threshold must lie in (0, 1].")
        for name in ("ngram", "num_perm", "num_proc", "chunk_size", "max_scan", "tasks", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.bands is not None and not 1 <= self.bands <= self.num_perm:
            raise ValueError(f"bands must lie in [1, num_perm={self.num_perm}].")

    def unused_options(self) -> dict[str, str]:
        if self.engine == "native":
            why = "it configures the datatrove engine (engine: datatrove)"
            return dict.fromkeys(("executor", "tasks", "workers", "executor_options"), why)
        unused = {"num_proc": "the native engine's processes; datatrove runs `tasks` tasks"}
        if self.executor == "local":
            unused["executor_options"] = "extra arguments of the Slurm and Ray executors (executor: slurm|ray)"
        else:
            unused["workers"] = "processes of datatrove's local executor; Slurm and Ray size their own"
        return unused

    def resolve(self) -> None:
        """``files`` and ``entries`` from the dataset names (or the files given, each row's form inferred)."""
        if self.datasets:
            self.files, self.entries = [], []
            for name in _names(self.datasets, "datasets"):
                dataset = local_dataset(self.dataset_dir, name)
                if len(dataset.files) != 1:
                    raise DataError(f"datasets: {name} is {len(dataset.files)} files; dedup reads one file each.")
                self.files.append(str(dataset.files[0]))
                self.entries.append(dict(dataset.entry.raw) if dataset.entry else {})
        if not self.files:
            raise DataError("datasets: name at least one dataset.")
        self.entries = self.entries or [{} for _ in self.files]
        file_names = [Path(path).name for path in self.files]
        if len(set(file_names)) != len(file_names):
            raise DataError(f"datasets must have distinct file names (outputs are named after them): {file_names}.")


MIX_STRATEGIES = ("interleave_under", "interleave_over")


@dataclass
class MixConfig(StepConfig):
    """Continued pre-training mix (SF-Med §3.1): medical and general corpora at a token ratio, through
    LLaMA-Factory's ``mix_strategy`` / ``interleave_probs``."""

    renamed_options: ClassVar[dict[str, str]] = {
        "tokenizer": "use model_name_or_path (the model whose tokenizer counts the tokens)."
    }

    medical: list[str] = option(help="dataset_info.json names of the medical pre-training (text) datasets.")
    general: list[str] = option(help="dataset_info.json names of the general pre-training (text) datasets.")
    output_dir: str = option(help="mix_report.json, mix_report.md and (with train_yaml) pt_mix.yaml.")
    model_name_or_path: str = option(help="The model whose tokenizer counts the tokens (the CPT base model).")
    dataset_dir: str = option(".", help=DATASET_DIR_HELP)
    medical_share: float = option(1.3, help="Medical share of the tokens (SF-Med: about 1.3B medical ...).")
    general_share: float = option(1.4, help="... to 1.4B general).")
    mix_strategy: Literal["interleave_under", "interleave_over"] = option(
        "interleave_under", help="under: stop when a source runs out; over: until every source has been seen."
    )
    train_yaml: str | None = option(
        None, help="An LF pt YAML to complete with dataset, mix_strategy and interleave_probs (pt_mix.yaml)."
    )
    num_proc: int = option(1, help="Processes counting tokens.")
    batch_size: int = option(1000, help="Records per tokenizer call.")

    def __post_init__(self) -> None:
        self.medical, self.general = _names(self.medical, "medical"), _names(self.general, "general")
        overlap = set(self.medical) & set(self.general)
        if overlap:
            raise ValueError(f"datasets named as both medical and general: {sorted(overlap)}.")
        if self.medical_share <= 0 or self.general_share <= 0:
            raise ValueError("medical_share and general_share must be positive.")
        if self.num_proc < 1 or self.batch_size < 1:
            raise ValueError("num_proc and batch_size must be >= 1.")


POOLS = ("single", "multi")
# how a Chinese system instruction addresses the model: second person, a request, or a role given to it
ADDRESS_MARKERS = ("你", "您", "请", "作为", "扮演", "身为", "担任")


@dataclass
class DiversifyConfig(EndpointOptions, StepConfig):
    """Instruction diversification (SF-Med §3.2, Fig. 2) for one pool of system instructions."""

    renamed_options: ClassVar[dict[str, str]] = {"max_tokens": "use max_new_tokens."}

    seeds: str = option(help='Seed instructions: .jsonl/.json rows with "instruction", or .txt, one per line.')
    output_dir: str = option(help="rounds.jsonl (resumable), instructions.jsonl, diversify_report.json.")
    generator_url: str = option(help="OpenAI-compatible endpoint of the generator, e.g. http://127.0.0.1:8000/v1.")
    generator_model: str = option(help="The generator's model name at that endpoint.")
    pool: Literal["single", "multi"] = option(
        "single", help="single: answer directly; multi: may ask follow-up questions, never repeat one."
    )
    rounds: int = option(100, help="Rounds of the question/answer-bank dialogue.")
    new_per_round: int = option(5, help="Instructions asked of the generator each round.")
    history_pairs: int = option(5, help="Question-bank / answer-bank instructions shown as dialogue turns.")
    keep_oldest: int = option(20, help="m: a bank keeps its m oldest and n newest instructions.")
    keep_newest: int = option(40, help="n: see keep_oldest.")
    swap_every: int = option(10, help="Rounds between swaps of the question and answer banks (0: never).")
    seed: int = option(1, help="Seed of the bank split and of every round's draws.")
    temperature: float = option(0.9, help="Sampling temperature of the generator.")
    max_new_tokens: int = option(1024, help="Tokens the generator may write per round.")
    lexicon: str | None = option(None, help="Medical lexicon, one term per line; null: the bundled one.")
    min_terms: int = option(2, help="Medical terms an accepted instruction contains.")
    min_chars: int = option(20, help="Shortest accepted instruction (characters).")
    max_chars: int = option(300, help="Longest accepted instruction (characters).")
    max_similarity: float = option(0.6, help="Character-trigram Jaccard at which a candidate repeats a known one.")
    address_markers: list[str] = option(
        default_factory=lambda: list(ADDRESS_MARKERS),
        help="Second-person and role markers: an accepted instruction contains one of these (it addresses the model: "
        "a role, a request); candidates with none, such as fact statements and word salad, are rejected. A substring "
        "test, Chinese by default; every seed must pass it. [] turns it off. YAML list: [你, 请].",
    )

    def __post_init__(self) -> None:
        for name in ("rounds", "new_per_round", "history_pairs", "keep_oldest", "keep_newest", "min_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1.")
        if self.swap_every < 0 or self.min_terms < 0:
            raise ValueError("swap_every and min_terms must be >= 0.")
        if self.max_chars <= self.min_chars:
            raise ValueError("max_chars must exceed min_chars.")
        if not 0 < self.max_similarity <= 1:
            raise ValueError("max_similarity must lie in (0, 1].")
        if any(not marker.strip() for marker in self.address_markers):
            raise ValueError("address_markers: an empty marker matches every text; remove it ([] turns the check off).")


@dataclass
class AttachConfig(StepConfig):
    """System instructions attached to SFT samples: the single-turn pool for one-turn rows, the multi-turn pool
    for rows with history."""

    renamed_options: ClassVar[dict[str, str]] = {
        "input_dir": "use dataset_dir: the output_dir of `sfmed data dedup` (it writes a dataset_info.json there)."
    }

    datasets: list[str] = option(help=DATASETS_HELP + " SFT datasets (alpaca or sharegpt).")
    single_pool: str = option(help="instructions.jsonl written by `sfmed data diversify` (pool single).")
    multi_pool: str = option(help="instructions.jsonl written by `sfmed data diversify` (pool multi).")
    output_dir: str = option(help='Files plus a dataset_info.json with a "<name>_diversified" entry each.')
    dataset_dir: str = option(".", help=DATASET_DIR_HELP)
    seed: int = option(1, help="Seed of the instruction drawn for each row.")
    keep_existing: bool = option(False, help="Rows that already have a system prompt keep it.")

    def __post_init__(self) -> None:
        self.datasets = _names(self.datasets, "datasets")


@dataclass
class ConvertConfig(StepConfig):
    name: str = option(help="Registered corpus (`sfmed data registry` lists them) or raw schema name.")
    input: str = option(help="The published file (a directory for cmedqa2 and plain-text corpora).")
    output: str = option(help="LLaMA-Factory .jsonl to write (and OUTPUT.report.json).")
    stage: Literal["pt", "sft"] | None = option(
        None, help="pt or sft: for corpora registered for both, or the SFT form of a dialogue/exam corpus."
    )
    form: Literal["pt", "alpaca", "sharegpt"] | None = option(None, help="Override the output form.")
    skip_invalid: bool = option(False, help="Count bad rows in the report and go on, instead of stopping.")


@dataclass
class CheckConfig(StepConfig):
    dataset: str = option(help="A dataset_info.json name (in --dataset-dir) or a data file (its form inferred).")
    dataset_dir: str = option(".", help=DATASET_DIR_HELP)
    examples: int = option(3, help="Examples printed per problem.")


@dataclass
class RegistryConfig(StepConfig):
    dataset_info: str = option("dataset_info.json", help="The dataset_info.json to check (or write).")
    write: bool = option(False, help="Set the registry entries in the file (otherwise: check, exit 1 if it differs).")
