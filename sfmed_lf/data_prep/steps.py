"""The ``sfmed data`` steps (SF-Med §3.1-3.2): convert, check, registry, dedup, mix, diversify, attach-system."""

from __future__ import annotations

import json
from pathlib import Path

from sfmed_lf.data_prep.config import (
    AttachConfig,
    CheckConfig,
    ConvertConfig,
    DedupConfig,
    DiversifyConfig,
    MixConfig,
    RegistryConfig,
)
from sfmed_lf.errors import DataError
from sfmed_lf.steps import Stage, Step


class Convert(Step[ConvertConfig]):
    name, config, yaml, arguments = "convert", ConvertConfig, False, ("name", "input", "output")
    help = "a corpus of Tables 1-2 from its published raw schema to an LLaMA-Factory file"

    def run(self, config: ConvertConfig) -> list[Path]:
        from sfmed_lf.data_prep.convert import convert_corpus, report_path

        report = convert_corpus(
            config.name, config.input, config.output, config.stage, config.form, config.skip_invalid
        )
        print(
            f"sfmed data convert: {report['written']} of {report['rows_read']} rows -> {config.output} "
            f"({report['form']}); {report['skipped_invalid']} invalid skipped, "
            f"{sum(report['excluded_by_dataset'].values())} excluded by the dataset"
        )
        return [Path(config.output), report_path(config.output)]


class Check(Step[CheckConfig]):
    name, config, yaml, arguments = "check", CheckConfig, False, ("dataset",)
    help = "read every row of an LF dataset as LLaMA-Factory would; count the problems (exit 2 when any)"

    def run(self, config: CheckConfig) -> list[Path]:
        from sfmed_lf.data_prep.check import WARNINGS, check_dataset, format_report

        report = check_dataset(config)
        print(format_report(report))
        errors = sum(count for code, count in report["problems"].items() if code not in WARNINGS)
        if errors:
            raise DataError(f"{report['dataset']}: {errors} row(s) with errors (listed above).")
        return []


class Registry(Step[RegistryConfig]):
    name, config, yaml = "registry", RegistryConfig, False
    help = "list the corpora; check or --write their dataset_info.json entries"

    def run(self, config: RegistryConfig) -> list[Path]:
        from sfmed_lf.data_prep.registry import merged_dataset_info
        from sfmed_lf.formats.corpora import CORPORA
        from sfmed_lf.formats.datasets import load_dataset_info
        from sfmed_lf.utils.io import atomic_write_text

        for corpus in CORPORA:
            entries = ", ".join(corpus.entry_name(stage) for stage in corpus.stages)
            print(f"{corpus.title:32} {corpus.source:48} {corpus.raw_schema:16} {entries}")
        path = Path(config.dataset_info)
        current = load_dataset_info(path.parent, "dataset_info")[1] if path.exists() else {}
        merged = merged_dataset_info(current)
        if config.write:
            atomic_write_text(path, json.dumps(merged, ensure_ascii=False, indent=2) + "\n")
            print(f"sfmed data registry: wrote {len(merged)} entries to {path}")
            return [path]
        if merged != current:
            raise DataError(f"{path} differs from the registry; run with --write.")
        return []


class Dedup(Step[DedupConfig]):
    name, config = "dedup", DedupConfig
    help = "MinHash-LSH near-duplicate removal, per dataset then across all"

    def run(self, config: DedupConfig) -> list[Path]:
        from sfmed_lf.data_prep.dedup import run_dedup
        from sfmed_lf.formats.datasets import DATASET_INFO
        from sfmed_lf.utils.io import atomic_write_text, refuse_to_overwrite

        out = Path(config.output_dir)
        refuse_to_overwrite(out / DATASET_INFO, [Path(config.dataset_dir) / DATASET_INFO])
        written = run_dedup(config)
        if config.datasets:  # the kept files under the datasets' names, so later steps use dataset_dir: output_dir
            info = {
                name: {**entry, "file_name": Path(path).name}
                for name, path, entry in zip(config.datasets, config.files, config.entries, strict=True)
            }
            atomic_write_text(out / DATASET_INFO, json.dumps(info, ensure_ascii=False, indent=2) + "\n")
            written.append(out / DATASET_INFO)
        return written


class Mix(Step[MixConfig]):
    name, config = "mix", MixConfig
    help = "token counts and LF interleave_probs for the medical:general CPT mix"

    def run(self, config: MixConfig) -> list[Path]:
        from sfmed_lf.data_prep.mix import run_mix

        return run_mix(config)


class Diversify(Step[DiversifyConfig]):
    name, config = "diversify", DiversifyConfig
    help = "new system instructions from a generator endpoint (question/answer banks, Fig. 2)"

    def run(self, config: DiversifyConfig) -> list[Path]:
        from sfmed_lf.data_prep.diversify import DiversifyStep

        return DiversifyStep(config).run()


class AttachSystem(Step[AttachConfig]):
    name, config = "attach-system", AttachConfig
    help = "diversified instructions as system prompts of SFT samples (by turn count)"

    def run(self, config: AttachConfig) -> list[Path]:
        from sfmed_lf.data_prep.attach import attach_system_prompts

        return attach_system_prompts(config)


STAGE = Stage(
    "data",
    "SFT and pre-training data preparation",
    [Convert(), Check(), Registry(), Dedup(), Mix(), Diversify(), AttachSystem()],
)
