"""The ``sfmed data`` steps (SF-Med §3.1-3.2): convert, check, registry, dedup, mix, diversify, attach-system."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

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
from sfmed_lf.formats.dataset_names import DIVERSIFIED_SUFFIX
from sfmed_lf.steps import Declared, Stage, Step


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

    def declared(self, config: ConvertConfig) -> Declared:
        return Declared(outputs=[config.output, f"{config.output}.report.json"], reads=[config.input])


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

    def declared(self, config: DedupConfig) -> Declared:
        from sfmed_lf.formats.datasets import load_dataset_info

        declared = super().declared(config)
        out = config.output_dir
        declared.outputs = [os.path.join(out, name) for name in ("dedup_report.json", "removed.jsonl")]
        try:
            info = load_dataset_info(config.dataset_dir)[1]
        except DataError:
            info = {}
        for name in config.datasets:  # the kept rows, under the input file's name, registered under the same name
            file_name = Path(str(info.get(name, {}).get("file_name", name))).name
            declared.outputs.append(os.path.join(out, file_name))
            declared.datasets.append((out, name, os.path.join(out, file_name)))
        if config.datasets:
            declared.outputs.append(os.path.join(out, "dataset_info.json"))
        return declared


class Mix(Step[MixConfig]):
    name, config = "mix", MixConfig
    help = "token counts and LF interleave_probs for the medical:general CPT mix"

    def run(self, config: MixConfig) -> list[Path]:
        from sfmed_lf.data_prep.mix import run_mix

        return run_mix(config)

    def declared(self, config: MixConfig) -> Declared:
        names = [*config.medical, *config.general]
        out = config.output_dir
        declared = Declared(
            outputs=[os.path.join(out, "mix_report.json"), os.path.join(out, "mix_report.md")],
            datasets_read=[(config.dataset_dir, name) for name in names],
        )
        if config.train_yaml:  # the train YAML with the mix's datasets (interleave_probs known once counted)
            mix_yaml = os.path.join(out, "pt_mix.yaml")
            declared.outputs.append(mix_yaml)
            train = (
                yaml.safe_load(Path(config.train_yaml).read_text(encoding="utf-8"))
                if Path(config.train_yaml).is_file()
                else {}
            )
            options = {
                "dataset": ",".join(names),
                "dataset_dir": config.dataset_dir,
                "mix_strategy": config.mix_strategy,
            }
            declared.train_configs[mix_yaml] = {**(train or {}), **options}
        return declared


class Diversify(Step[DiversifyConfig]):
    name, config = "diversify", DiversifyConfig
    help = "new system instructions from a generator endpoint (question/answer banks, Fig. 2)"

    def run(self, config: DiversifyConfig) -> list[Path]:
        from sfmed_lf.data_prep.diversify import DiversifyStep

        return DiversifyStep(config).run()

    def declared(self, config: DiversifyConfig) -> Declared:
        out = config.output_dir
        return Declared(
            outputs=[os.path.join(out, name) for name in ("instructions.jsonl", "diversify_report.json")],
            resumable=[out],  # the rounds replay only for the same generator, which a URL does not identify
        )


class AttachSystem(Step[AttachConfig]):
    name, config = "attach-system", AttachConfig
    help = "diversified instructions as system prompts of SFT samples (by turn count)"

    def run(self, config: AttachConfig) -> list[Path]:
        from sfmed_lf.data_prep.attach import attach_system_prompts

        return attach_system_prompts(config)

    def declared(self, config: AttachConfig) -> Declared:
        declared = super().declared(config)
        out = config.output_dir
        declared.outputs = []
        for name in config.datasets:
            target = os.path.join(out, f"{name}{DIVERSIFIED_SUFFIX}.jsonl")
            declared.outputs.append(target)
            declared.datasets.append((out, f"{name}{DIVERSIFIED_SUFFIX}", target))
        declared.outputs += [os.path.join(out, "dataset_info.json"), os.path.join(out, "attach_report.json")]
        return declared


STAGE = Stage(
    "data",
    "SFT and pre-training data preparation",
    [Convert(), Check(), Registry(), Dedup(), Mix(), Diversify(), AttachSystem()],
)
