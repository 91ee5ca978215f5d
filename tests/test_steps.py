"""One step shape: every `sfmed` step comes from the registry, documents every option (`sfmed STAGE STEP -h` lists
them), speaks one YAML vocabulary, refuses the keys it replaced by naming the new one, and checks value types."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import pytest
import yaml

from sfmed_lf.cli import build_parser, load_stage, main
from sfmed_lf.config_files import ConfigError, load_config
from sfmed_lf.steps import STAGES, TOP_LEVEL_STEPS, Step, StepConfig, load_top_level_step, undocumented_options
from tests.helpers import REPO_ROOT

ALL_STEPS = [(command, step) for command in STAGES for step in load_stage(command).steps]
IDS = [f"{command}-{step.name}" for command, step in ALL_STEPS]
# every step with the command that runs it: `sfmed STAGE STEP` and the top-level `sfmed NAME` (tiny-model, doctor)
EVERY_STEP = [((command, step.name), step) for command, step in ALL_STEPS] + [
    ((name,), load_top_level_step(name)) for name in TOP_LEVEL_STEPS
]


def registry_step(path: tuple[str, ...]) -> Step:
    return load_top_level_step(path[0]) if len(path) == 1 else load_stage(path[0]).step(path[1])


# the sfmed step each example YAML is written for (LLaMA-Factory YAMLs have a `stage` key and are tested elsewhere)
EXAMPLE_STEPS = {
    "sfmed_attach_system.yaml": ("data", "attach-system"),
    "sfmed_dedup_sft.yaml": ("data", "dedup"),
    "sfmed_dedup_sft_ray.yaml": ("data", "dedup"),
    "sfmed_dedup_sft_slurm.yaml": ("data", "dedup"),
    "sfmed_diversify_single.yaml": ("data", "diversify"),
    "sfmed_pt_mix.yaml": ("data", "mix"),
    "sfmed_pref.yaml": ("pref", "sample"),
    "sfmed_eval.yaml": ("eval", "generate"),
    "sfmed_privacy_audit.yaml": ("privacy", "audit"),
    "sfmed_privacy_db.yaml": ("privacy", "build-db"),
    "attach_system.yaml": ("data", "attach-system"),
    "dedup.yaml": ("data", "dedup"),
    "diversify_multi.yaml": ("data", "diversify"),
    "diversify_single.yaml": ("data", "diversify"),
    "mix.yaml": ("data", "mix"),
    "pref.yaml": ("pref", "sample"),
    "eval.yaml": ("eval", "generate"),
    "privacy_audit.yaml": ("privacy", "audit"),
    "privacy_db.yaml": ("privacy", "build-db"),
    "world.yaml": ("world", "generate"),
    "measure.yaml": ("world", "measure"),
    "report.yaml": ("world", "report"),
    "tiny_model.yaml": ("tiny-model",),
}


@pytest.mark.parametrize(("path", "step"), EVERY_STEP, ids=["-".join(path) for path, _ in EVERY_STEP])
def test_every_step_has_the_one_shape_and_lists_every_option_in_its_help(path, step, capsys):
    assert isinstance(step, Step) and issubclass(step.config, StepConfig) and dataclasses.is_dataclass(step.config)
    assert typing.get_type_hints(type(step).run)["return"] == list[Path], "run returns the paths it wrote"
    assert not undocumented_options(step.config), "every option carries help text"
    assert path[-1] == step.name
    with pytest.raises(SystemExit) as exit_:
        main([*path, "-h"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    assert step.help in " ".join(shown.split())
    for item in dataclasses.fields(step.config):
        if item.init and not item.metadata.get("internal"):
            name = item.name if step.yaml or item.name in step.arguments else f"--{item.name.replace('_', '-')}"
            assert name in shown, f"{name} missing from `sfmed {' '.join(path)} -h`"
            assert item.metadata["help"].split()[0] in shown


def test_the_command_line_is_built_from_the_registry():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert set(STAGES) | set(TOP_LEVEL_STEPS) <= set(commands)
    assert {"tiny-model", "doctor"} <= set(TOP_LEVEL_STEPS), "hand-written commands beside the registry are gone"
    assert set(commands) == {*STAGES, *TOP_LEVEL_STEPS, "recipe"}
    for command in STAGES:
        steps = commands[command]._subparsers._group_actions[0].choices
        assert {step.name for step in load_stage(command).steps} <= set(steps)


def test_top_level_steps_run_through_the_registry(tmp_path, monkeypatch, capsys):
    """`sfmed tiny-model [CONFIG.yaml] [key=value ...]` and `sfmed doctor` as users type them run the registry's step
    (its run prints the paths it wrote; a doctor that finds problems exits 1)."""
    from sfmed_lf.errors import ProblemsFound

    ran = []
    tiny, doctor = load_top_level_step("tiny-model"), load_top_level_step("doctor")
    monkeypatch.setattr(type(tiny), "run", lambda self, config: ran.append(config) or [Path(config.output_dir)])
    config = tmp_path / "tiny.yaml"
    config.write_text("hidden_size: 64\nnum_attention_heads: 4\n")
    assert main(["tiny-model", str(config), f"output_dir={tmp_path / 'm'}", "seed=3"]) == 0
    assert (ran[0].hidden_size, ran[0].seed, ran[0].output_dir) == (64, 3, str(tmp_path / "m"))
    assert f"sfmed tiny-model: wrote {tmp_path / 'm'}" in capsys.readouterr().out
    assert main(["tiny-model", "seed=4"]) == 0 and ran[1].seed == 4  # key=value without a YAML
    assert main(["doctor"]) == 0 and "hooks:" in capsys.readouterr().out

    def unwell(self, config):
        raise ProblemsFound("problems found (listed above).")

    monkeypatch.setattr(type(doctor), "run", unwell)
    assert main(["doctor"]) == 1
    assert capsys.readouterr().err.strip() == "sfmed doctor: problems found (listed above)."


VOCABULARY_BANNED = {"max_tokens", "tokenizer", "records", "prompts", "prompt_format", "input_dir", "policy_path"}


@pytest.mark.parametrize(("command", "step"), ALL_STEPS, ids=IDS)
def test_one_vocabulary_across_stages(command, step):
    names = {item.name for item in dataclasses.fields(step.config) if item.init}
    assert not names & VOCABULARY_BANNED
    stray = {name for name in names if name.endswith(("_endpoint", "_path", "_served_name", "_max_tokens"))}
    assert not {name for name in stray if not name.endswith("model_name_or_path")}
    for name in names:
        if name.endswith("_url"):
            assert f"{name.removesuffix('_url')}_model" in names, "an endpoint is <role>_url + <role>_model"
    if "datasets" in names and step.yaml:
        assert "dataset_dir" in names, "datasets are dataset_info names, found in dataset_dir"


@pytest.mark.parametrize(
    ("command", "step", "old", "new"),
    [
        ("eval", "generate", "model_a_path=m", "candidate_model_name_or_path"),
        ("eval", "generate", "judge_endpoint=http://x/v1", "judge_url"),
        ("eval", "generate", "judge_max_tokens=5", "judge_max_new_tokens"),
        ("pref", "sample", "policy_path=m", "model_name_or_path"),
        ("pref", "sample", "max_tokens=5", "max_new_tokens"),
        ("pref", "sample", "prompts=x.json", "datasets"),
        ("data", "diversify", "max_tokens=5", "max_new_tokens"),
        ("data", "mix", "tokenizer=m", "model_name_or_path"),
        ("data", "attach-system", "input_dir=d", "dataset_dir"),
        ("privacy", "audit", "records=[a.json]", "datasets"),
    ],
)
def test_old_keys_are_refused_naming_the_new_one(command, step, old, new, capsys):
    assert main([command, step, "output_dir=o", old]) == 2
    error = capsys.readouterr().err
    assert f"option {old.split('=')[0]!r} is no longer used" in error and new in error


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("threshold=high", "threshold: 'high' is not a number"),
        ("num_proc=2.5", "num_proc: 2.5 is not an integer"),
        ("datasets=sfmed_sample_sft_single", "datasets: 'sfmed_sample_sft_single' is not a list"),
        ("cross_dataset=maybe", "cross_dataset: 'maybe' is not true or false"),
        ("engine=spark", "engine: 'spark' is not one of 'native', 'datatrove'"),
        ("threshold=0.5 threshold=0.6", "override threshold is given twice"),
    ],
)
def test_values_of_the_wrong_type_are_refused_not_coerced(override, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(load_stage("data").step("dedup").config, None, [f"output_dir={tmp_path}", *override.split()])


UNUSED_IN_MODE = [
    # (stage, step, the mode, an option that does nothing in it, what the refusal says)
    ("data", "dedup", [], "tasks=8", "it configures the datatrove engine"),
    ("data", "dedup", [], "executor=slurm", "it configures the datatrove engine"),
    ("data", "dedup", ["engine=datatrove"], "num_proc=8", "the native engine's processes"),
    ("data", "dedup", ["engine=datatrove"], "executor_options={partition: cpu}", "Slurm and Ray executors"),
    ("data", "dedup", ["engine=datatrove", "executor=slurm"], "workers=4", "datatrove's local executor"),
    ("pref", "sample", ["policy_url=http://127.0.0.1:9/v1"], "policy_batch_size=8", "the endpoint at policy_url"),
    ("pref", "sample", ["policy_url=http://127.0.0.1:9/v1"], "infer_backend=vllm", "the endpoint at policy_url"),
    ("pref", "sample", ["model_name_or_path=m"], "policy_model=sft", "policy_url, which is not set"),
    ("pref", "sample", ["model_name_or_path=m", "infer_backend=vllm"], "policy_batch_size=4", "vLLM batches"),
    ("eval", "rouge", ["items=[a.jsonl]"], "judge_model=j", "judge_url, which is not set"),
    ("eval", "rouge", ["items=[a.jsonl]"], "judge_max_new_tokens=64", "judge_url, which is not set"),
]


@pytest.mark.parametrize(("command", "step", "mode", "option", "why"), UNUSED_IN_MODE)
def test_options_that_do_nothing_in_the_chosen_mode_are_refused(command, step, mode, option, why, tmp_path):
    config_class = load_stage(command).step(step).config
    name = option.split("=")[0]
    with pytest.raises(ConfigError, match=f"option {name} does nothing here: .*{re.escape(why)}"):
        load_config(config_class, None, [f"output_dir={tmp_path}", *mode, option])
    default = dataclasses.fields(config_class)[[f.name for f in dataclasses.fields(config_class)].index(name)]
    if default.default is not dataclasses.MISSING:  # restating the default is harmless
        load_config(config_class, None, [f"output_dir={tmp_path}", *mode, f"{name}={json.dumps(default.default)}"])


def test_the_same_options_in_the_mode_they_belong_to_are_taken(tmp_path):
    load_config(
        load_stage("data").step("dedup").config,
        None,
        [
            f"output_dir={tmp_path}",
            "engine=datatrove",
            "executor=slurm",
            "tasks=8",
            "executor_options={partition: cpu}",
        ],
    )
    load_config(load_stage("pref").step("sample").config, None, [f"output_dir={tmp_path}", "policy_batch_size=8"])
    load_config(
        load_stage("eval").step("rouge").config,
        None,
        [f"output_dir={tmp_path}", "judge_url=http://127.0.0.1:9/v1", "judge_model=j", "judge_max_new_tokens=64"],
    )


def test_an_option_that_does_nothing_is_one_line_on_the_command_line(capsys):
    assert main(["data", "dedup", "output_dir=o", "datasets=[a]", "workers=3"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "option workers does nothing here" in error, error


@pytest.mark.parametrize("name", sorted(EXAMPLE_STEPS))
def test_example_yamls_load_with_their_step(name):
    path = next(p for p in sorted((REPO_ROOT / "examples" / "yaml").rglob(name)))
    values = yaml.safe_load(path.read_text())
    assert "stage" not in values
    load_config(registry_step(EXAMPLE_STEPS[name]).config, path)


def test_every_sfmed_example_yaml_is_covered():
    sfmed_yamls = {
        path.name
        for path in (REPO_ROOT / "examples" / "yaml").rglob("*.yaml")
        if "stage" not in (yaml.safe_load(path.read_text()) or {})
        and not path.name.startswith(("infer", "sfmed_infer"))  # LF inference YAMLs
        and not path.name.endswith("recipe.yaml")  # `sfmed recipe` files (tests/test_recipe.py)
    }
    assert sfmed_yamls == set(EXAMPLE_STEPS)
