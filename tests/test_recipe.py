"""``sfmed recipe``: the 7B recipe's plan and static check, the produced-dataset check of every training YAML, and the
runner's markers, skips, re-runs by content, endpoints and failure handling on quick steps (``sfmed data convert``,
``sfmed pref judge`` against the rule judges). The training stages' kill-and-resume test is in
tests/test_recipe_training.py."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from llamafactory.hparams.parser import _parse_train_args

from sfmed_lf.recipe import endpoints as endpoint_module
from sfmed_lf.recipe.check import check_recipe
from sfmed_lf.recipe.fingerprint import RUN_STATISTICS, path_digest
from sfmed_lf.recipe.runner import Runner, plan, status
from sfmed_lf.recipe.spec import RecipeError, load_recipe
from sfmed_lf.recipe.stage_io import stage_io
from sfmed_lf.steps import TOP_LEVEL_STEPS, Declared, load_top_level_step
from tests.helpers import REPO_ROOT, run

RECIPE_7B = REPO_ROOT / "examples" / "yaml" / "sfmed_recipe.yaml"
TRAIN_YAMLS_7B = sorted(
    path for path in (REPO_ROOT / "examples" / "yaml").glob("*.yaml") if "stage" in yaml.safe_load(path.read_text())
)
RAW = REPO_ROOT / "tests" / "fixtures" / "raw"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A working directory with the project's examples, data and dataset_info.json, and nothing produced yet."""
    for name in ("examples", "data", "dataset_info.json"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True, sort_keys=False))
    return path


# --- the 7B recipe: plan and static check


def test_plan_of_the_7b_recipe_prints_the_8_gpu_commands_in_order(project):
    out = io.StringIO()
    assert plan(load_recipe(RECIPE_7B), out) == 0, out.getvalue()
    text = out.getvalue()
    launch = "FORCE_TORCHRUN=1 NNODES=1 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=127.0.0.1 MASTER_PORT=29500"
    commands = [line.strip() for line in text.splitlines() if line.startswith("  ")]
    trainings = [command for command in commands if "llamafactory-cli train" in command]
    assert trainings == [
        f"{launch} llamafactory-cli train saves/sfmed-7b/data/mix/pt_mix.yaml",
        f"{launch} llamafactory-cli train examples/yaml/sfmed_sft.yaml",
        f"{launch} llamafactory-cli train examples/yaml/sfmed_dpo.yaml",
    ]
    order = [
        "sfmed data convert medical_books /data/sfmed-raw/medical_books data/converted/pt/medical_books.jsonl",
        "sfmed data dedup examples/yaml/sfmed_dedup_sft.yaml",
        "sfmed data diversify examples/yaml/sfmed_diversify_single.yaml generator_url=http://127.0.0.1:PORT/v1",
        "sfmed data attach-system examples/yaml/sfmed_attach_system.yaml",
        "sfmed data mix examples/yaml/sfmed_pt_mix.yaml",
        trainings[0],
        trainings[1],
        "sfmed pref sample examples/yaml/sfmed_pref.yaml policy_url=http://127.0.0.1:PORT/v1",
        "sfmed pref judge examples/yaml/sfmed_pref.yaml",
        "sfmed pref train-rms examples/yaml/sfmed_pref.yaml",
        "sfmed pref score examples/yaml/sfmed_pref.yaml",
        "sfmed pref select examples/yaml/sfmed_pref.yaml",
        trainings[2],
        "sfmed eval all examples/yaml/sfmed_eval.yaml candidate_url=http://127.0.0.1:PORT/v1",
        "sfmed privacy audit examples/yaml/sfmed_privacy_audit.yaml",
        "sfmed privacy build-db examples/yaml/sfmed_privacy_db.yaml",
    ]
    positions = [next(i for i, command in enumerate(commands) if command.startswith(step)) for step in order]
    assert positions == sorted(positions)
    # the servers: started before the stages that need them, on 127.0.0.1, stopped after
    assert "#   start endpoint generator: vllm serve THUDM/glm-4-9b-chat" in text
    assert (
        text.index("start endpoint generator") < text.index("diversify_single") < text.index("stop endpoint generator")
    )
    for judge in ("judge_qwen", "judge_yi", "judge_glm"):
        assert (
            text.index(f"start endpoint {judge}")
            < text.index("[42/49] pref_judge")
            < text.index(f"stop endpoint {judge}")
        )
    assert "# check: every dataset and path each stage reads is written by an earlier stage or exists" in text

    three_nodes = io.StringIO()
    recipe = load_recipe(RECIPE_7B, ["launch.NNODES=3", "launch.MASTER_ADDR=node0", "raw=/mnt/raw"])
    assert plan(recipe, three_nodes) == 0
    assert "FORCE_TORCHRUN=1 NNODES=3 NODE_RANK=0 NPROC_PER_NODE=8 MASTER_ADDR=node0" in three_nodes.getvalue()
    assert "/mnt/raw/cmexam.csv" in three_nodes.getvalue()


def test_every_dataset_each_7b_yaml_names_is_produced_by_an_earlier_stage(project):
    recipe = load_recipe(RECIPE_7B)
    result = check_recipe(recipe)
    assert result.errors == []
    names = [stage.name for stage in recipe.stages]
    assert result.dataset_sources
    for stage, dataset_dir, name, source in result.dataset_sources:
        assert not name.startswith("sfmed_sample_"), (stage, name)
        assert source is not None and names.index(source) < names.index(stage), (stage, dataset_dir, name, source)
    # every 7B training YAML, also those a stage reads through another config (rm_yaml, the mix's train_yaml) and
    # the FSDP variant of the DPO stage: each dataset it names is written before the stage that uses it
    used_by = {Path(io.config_file).name: index for index, io in enumerate(result.ios) if io.config_file}
    for name, stage in (("sfmed_pt.yaml", "cpt"), ("sfmed_rm.yaml", "reward_models"), ("sfmed_dpo_fsdp.yaml", "dpo")):
        used_by[name] = names.index(stage)
    assert result.ios[names.index("pt_mix")].config["train_yaml"] == "examples/yaml/sfmed_pt.yaml"
    assert result.ios[names.index("reward_models")].config["rm_yaml"] == "examples/yaml/sfmed_rm.yaml"
    written = {}
    for index, step_io in enumerate(result.ios):
        for dataset_dir, name, _ in step_io.datasets_written:
            written.setdefault((os.path.normpath(dataset_dir), name), index)
        for path in step_io.outputs:
            written.setdefault(os.path.normpath(path), index)
    info = json.loads((REPO_ROOT / "dataset_info.json").read_text())
    for path in TRAIN_YAMLS_7B:
        config = yaml.safe_load(path.read_text())
        assert path.name in used_by, f"{path.name} is used by no stage of the recipe"
        dataset_dir = os.path.normpath(config["dataset_dir"])
        for name in config["dataset"].split(","):
            key = (dataset_dir, name)
            if key not in written:  # a registered corpus: its file is what a convert stage writes
                key = os.path.normpath(info[name]["file_name"])
            assert written[key] < used_by[path.name], (path.name, name)


def test_the_demo_is_the_tiny_recipe_and_each_stage_reads_what_an_earlier_one_wrote(project):
    """scripts/demo.sh runs examples/yaml/tiny/recipe.yaml; every dataset a tiny stage trains on or reads is written by
    an earlier stage (the world, dedup, attach-system, the selection), never a bundled sample."""
    assert "sfmed recipe run examples/yaml/tiny/recipe.yaml" in (REPO_ROOT / "scripts" / "demo.sh").read_text()
    recipe = load_recipe(REPO_ROOT / "examples" / "yaml" / "tiny" / "recipe.yaml")
    result = check_recipe(recipe)
    assert result.errors == []
    names = [stage.name for stage in recipe.stages]
    sources = {(stage, name): source for stage, _, name, source in result.dataset_sources}
    for (stage, name), source in sources.items():
        assert not name.startswith("sfmed_sample_"), (stage, name)
        assert source is not None and names.index(source) < names.index(stage), (stage, name, source)
    assert sources[("dpo_ondare", "sfmed_dpo_selected")] == "pref_select"
    assert sources[("sft", "world_sft_single_diversified")] == "attach_system"
    assert sources[("attach_system", "world_sft_single")] == "dedup"


def test_a_tiny_model_stage_is_read_through_the_step_registry(project):
    """The tiny recipe's tiny_model stage writes output_dir and reads its corpus, as the registry's step declares."""
    recipe = load_recipe(REPO_ROOT / "examples" / "yaml" / "tiny" / "recipe.yaml")
    io = stage_io(recipe.stage("tiny_model"))
    assert io.outputs == ["models/sfmed-tiny"] and "saves/tiny/world" in io.read_paths()
    assert io.options["hidden_size"] == 128


@pytest.mark.parametrize("name", sorted(TOP_LEVEL_STEPS))
def test_top_level_steps_are_recipe_stages_of_the_registry_with_no_special_case(name, tmp_path, monkeypatch):
    """`sfmed tiny-model` and `sfmed doctor` are resolved as every step is: what a stage of either writes is its
    step's own declaration (a special case in stage_io would not see the replaced one)."""
    step = load_top_level_step(name)
    assert not step.declared(step.config()).outputs or name == "tiny-model"
    marker = Declared(outputs=[f"written-by-{name}"])
    monkeypatch.setattr(type(step), "declared", lambda self, config: marker)
    recipe = load_recipe(
        write_recipe(tmp_path / "r.yaml", {"state_dir": "s", "stages": [{"name": "a", "sfmed": name}]})
    )
    assert recipe.stages[0].step == (name,)
    assert stage_io(recipe.stages[0]).declared is marker


def test_a_later_stage_writing_into_a_directory_an_earlier_stage_reads_is_an_error(tmp_path):
    """The guard's database reads the audit's directory; answers written there by a later stage would change that
    input after every run, and the recipe would never be done (what the tiny recipe did before)."""
    recipe = yaml.safe_load((REPO_ROOT / "examples" / "yaml" / "tiny" / "recipe.yaml").read_text())
    ask = next(stage for stage in recipe["stages"] if stage["name"] == "ask_guarded")
    ask["sfmed"] = ask["sfmed"].replace("saves/tiny/serving/", "saves/tiny/privacy/")
    errors = check_recipe(load_recipe(write_recipe(tmp_path / "into.yaml", recipe))).errors
    assert [e for e in errors if "ask_guarded: writes" in e and "which stage privacy_db reads" in e], errors


def test_a_stage_reading_what_a_later_stage_writes_is_an_error(project, tmp_path):
    recipe = yaml.safe_load(RECIPE_7B.read_text())
    stages = recipe["stages"]
    attach = next(s for s in stages if s["name"] == "attach_system")
    stages.remove(attach)
    stages.insert([s["name"] for s in stages].index("sft") + 1, attach)  # SFT before its data
    errors = check_recipe(load_recipe(write_recipe(tmp_path / "late.yaml", recipe))).errors
    assert any(
        "stage sft: dataset sfmed_sft_cmexam_diversified (saves/sfmed-7b/data/diversified) is written by stage "
        "attach_system, which runs later" in error
        for error in errors
    ), errors
    stages.remove(attach)  # no stage writes it: the error names the step that would
    errors = check_recipe(load_recipe(write_recipe(tmp_path / "missing.yaml", recipe))).errors
    assert any("sfmed_sft_cmexam_diversified" in e and "`sfmed data attach-system` writes it" in e for e in errors)
    assert run(["sfmed", "recipe", "run", str(tmp_path / "missing.yaml")], check=False, cwd=project).returncode == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, r"late\.yaml:1: unknown key\(s\) colour"),
        ({"stages": [{"name": "x", "sfmed": "data dedup a.yaml", "endpoints": ["nowhere"]}]}, r"endpoint 'nowhere'"),
        ({"stages": [{"name": "x", "sfmed": "data dedup a.yaml", "train": "b.yaml"}]}, "either sfmed"),
        ({"endpoints": {"gen": {"serve": "vllm serve m --port ${port}"}}}, "bind the server to 127.0.0.1"),
        ({"endpoints": {"gen": {"serve": "vllm serve m --host 127.0.0.1"}}}, r"put \$\{port\}"),
        ({"stages": [{"name": "x", "sfmed": "data dedup ${nothing}.yaml"}]}, r"unknown variable \$\{nothing\}"),
    ],
)
def test_bad_recipes_are_refused_naming_file_line_and_field(tmp_path, change, message):
    recipe = {"state_dir": "s", "stages": [{"name": "a", "sfmed": "data dedup a.yaml"}], **change}
    with pytest.raises(RecipeError, match=message):
        load_recipe(write_recipe(tmp_path / "late.yaml", recipe))


def test_unknown_variables_on_the_command_line_are_refused(tmp_path):
    path = write_recipe(
        tmp_path / "r.yaml", {"state_dir": "s", "vars": {"raw": "x"}, "stages": [{"name": "a", "sfmed": "doctor"}]}
    )
    with pytest.raises(RecipeError, match="rwa='y' names no variable"):
        load_recipe(path, ["rwa=y"])


# --- training stops before loading the model when a dataset has not been produced


@pytest.mark.parametrize(
    ("yaml_name", "step"),
    [
        ("sfmed_pt.yaml", "`sfmed data convert medical_books RAW data/converted/pt/medical_books.jsonl` writes it"),
        ("sfmed_sft.yaml", "`sfmed data attach-system` writes it"),
        ("sfmed_rm.yaml", "`sfmed pref judge` writes it"),
        ("sfmed_dpo.yaml", "`sfmed pref select` writes it"),
        ("sfmed_dpo_fsdp.yaml", "`sfmed pref select` writes it"),
    ],
)
def test_training_on_a_dataset_not_produced_yet_names_the_step(project, yaml_name, step):
    values = yaml.safe_load((REPO_ROOT / "examples" / "yaml" / yaml_name).read_text())
    for option in ("deepspeed", "bf16", "fsdp", "fsdp_config"):
        values.pop(option, None)
    with pytest.raises(ValueError, match="Training stopped before loading the model") as error:
        _parse_train_args(values)
    assert step in str(error.value)


def test_a_produced_dataset_passes_and_a_missing_file_is_named(project):
    values = {
        "model_name_or_path": "unused",
        "stage": "dpo",
        "do_train": True,
        "finetuning_type": "full",
        "dataset_dir": "saves/sfmed-7b/pref",
        "dataset": "sfmed_dpo_selected",
        "template": "sfmed",
        "output_dir": "out",
        "report_to": "none",
    }
    pref = project / "saves" / "sfmed-7b" / "pref"
    pref.mkdir(parents=True)
    (pref / "dataset_info.json").write_text(
        json.dumps({"sfmed_dpo_selected": {"file_name": "selected.jsonl", "ranking": True}})
    )
    with pytest.raises(ValueError, match=r"saves/sfmed-7b/pref/selected.jsonl \(its file_name in .*\) does not exist"):
        _parse_train_args(values)
    (pref / "selected.jsonl").write_text("")
    assert _parse_train_args(values)[1].dataset == ["sfmed_dpo_selected"]
    with pytest.raises(ValueError, match=r"has no entry 'sfmed_dpo_pairs' \(similar: sfmed_sample_dpo_pairs\)"):
        _parse_train_args({**values, "dataset_dir": ".", "dataset": "sfmed_dpo_pairs"})


@pytest.mark.slow
def test_llamafactory_cli_train_stops_before_loading_the_model(project):
    result = run(["llamafactory-cli", "train", "examples/yaml/sfmed_dpo.yaml"], cwd=project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "`sfmed pref select` writes it" in output and "Training stopped before loading the model" in output
    assert "tokenizer" not in output.lower() and "loading weights" not in output.lower()


def test_the_samples_are_named_as_samples_and_only_the_tiny_yamls_use_them():
    info = json.loads((REPO_ROOT / "dataset_info.json").read_text())
    bundled = {name for name, entry in info.items() if entry.get("file_name", "").startswith("data/sfmed_")}
    assert bundled and all(name.startswith("sfmed_sample_") for name in bundled)
    for path in (REPO_ROOT / "examples" / "yaml").glob("*.yaml"):
        assert "sfmed_sample_" not in path.read_text(), path.name


# --- the runner on quick steps


def convert_chain(tmp_path: Path) -> Path:
    """raw -> a -> b -> c, three `sfmed data convert` stages, each reading what the one before wrote."""
    raw = tmp_path / "raw.json"
    shutil.copy(RAW / "alpaca_zh.json", raw)
    return write_recipe(
        tmp_path / "chain.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "vars": {"dir": str(tmp_path)},
            "stages": [
                {"name": "a", "sfmed": "data convert alpaca_zh ${dir}/raw.json ${dir}/a.jsonl"},
                {"name": "b", "sfmed": "data convert alpaca ${dir}/a.jsonl ${dir}/b.jsonl --form alpaca"},
                {"name": "c", "sfmed": "data convert alpaca ${dir}/b.jsonl ${dir}/c.jsonl --form pt"},
            ],
        },
    )


def run_recipe(path: Path, *args: str) -> tuple[int, str, list[str]]:
    out = io.StringIO()
    code = Runner(load_recipe(path), out, echo=False).run(tuple(args))
    text = out.getvalue()
    ran = [line.split(":")[0].split("] ")[1] for line in text.splitlines() if ": running" in line]
    return code, text, ran


def test_run_skips_finished_stages_and_reruns_changed_ones_by_content(tmp_path):
    recipe = convert_chain(tmp_path)
    assert run_recipe(recipe)[::2] == (0, ["a", "b", "c"])
    first = {name: (tmp_path / f"{name}.jsonl").read_bytes() for name in "abc"}
    assert run_recipe(recipe)[::2] == (0, [])  # all done

    raw = tmp_path / "raw.json"  # the same rows, written differently: a re-runs, writes the same, b and c stay done
    raw.write_text(json.dumps(json.loads(raw.read_text()), ensure_ascii=False))
    assert run_recipe(recipe)[::2] == (0, ["a"])
    assert {name: (tmp_path / f"{name}.jsonl").read_bytes() for name in "abc"} == first

    rows = json.loads(raw.read_text())  # another row: everything downstream re-runs
    raw.write_text(
        json.dumps([*rows, {"instruction": "咳嗽怎么办？", "input": "", "output": "多喝水。"}], ensure_ascii=False)
    )
    code, text, ran = run_recipe(recipe)
    assert (code, ran) == (0, ["a", "b", "c"])
    assert "[1/3] a: changed: " + str(raw) in text
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == len(rows) + 1

    assert run_recipe(recipe, "b")[::2] == (0, ["b"])  # --force b: b runs; c's input is unchanged


def test_a_failed_stage_is_not_marked_finished_and_the_rerun_starts_there(tmp_path):
    recipe = convert_chain(tmp_path)
    spec = yaml.safe_load(recipe.read_text())
    spec["stages"][2]["sfmed"] = "data convert alpaca ${dir}/b.jsonl ${dir}/c.jsonl"  # no --form: the step refuses
    write_recipe(recipe, spec)
    code, text, ran = run_recipe(recipe)
    assert (code, ran) == (1, ["a", "b", "c"])
    assert "[3/3] c: FAILED" in text and "log " + str(tmp_path / "state" / "logs" / "c.log") in text
    assert "alpaca is a raw schema" in (tmp_path / "state" / "logs" / "c.log").read_text()
    state = io.StringIO()
    status(load_recipe(recipe), state)
    assert "[3/3] unfinished" in state.getvalue() and "[2/3] done" in state.getvalue()
    spec["stages"][2]["sfmed"] += " --form pt"
    write_recipe(recipe, spec)
    assert run_recipe(recipe)[::2] == (0, ["c"])


def test_a_second_runner_is_refused_while_one_holds_the_lock(tmp_path):
    import fcntl

    recipe = convert_chain(tmp_path)
    (tmp_path / "state").mkdir()
    with open(tmp_path / "state" / "lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, text, ran = run_recipe(recipe)
    assert (code, ran) == (3, []) and "another run holds" in text


def judge_recipe(tmp_path: Path, serve: str) -> Path:
    """`sfmed pref judge` against the rule judges, served by the runner for the stage."""
    pref = tmp_path / "pref"
    pref.mkdir()
    rows = [
        {"id": f"p{i}", "system": "", "history": [], "question": question, "responses": answers}
        for i, (question, answers) in enumerate(
            [
                ("最近总是头痛，怎么办？", ["头痛可能与睡眠不足、血压升高有关，建议测量血压并规律作息。", "不知道。"]),
                ("孩子发烧到三十九度怎么办？", ["先物理降温并补充水分，体温持续不退请及时就医。", "睡一觉。"]),
            ]
        )
    ]
    (pref / "responses.jsonl").write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    (tmp_path / "pref.yaml").write_text(yaml.safe_dump({"output_dir": str(pref), "min_votes": 2, "concurrency": 2}))
    judges = [{"url": "${endpoints.rules.url}", "model": model} for model in ("terms", "length", "clean")]
    return write_recipe(
        tmp_path / "judge.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "endpoints": {"rules": {"serve": serve, "ready_timeout_s": 60}},
            "stages": [
                {
                    "name": "judge",
                    "sfmed": f"pref judge {tmp_path / 'pref.yaml'}",
                    "endpoints": ["rules"],
                    "set": {"judges": judges},
                }
            ],
        },
    )


@pytest.fixture
def started(monkeypatch):
    servers = []

    def recording_start(*args, **kwargs):
        servers.append(endpoint_module.start(*args, **kwargs))
        return servers[-1]

    monkeypatch.setattr("sfmed_lf.recipe.runner.start", recording_start)
    return servers


def test_endpoints_are_started_for_their_stage_polled_and_stopped(tmp_path, started):
    recipe = judge_recipe(tmp_path, "sfmed pref rule-judge --host 127.0.0.1 --port ${port}")
    code, text, ran = run_recipe(recipe)
    assert (code, ran) == (0, ["judge"]), text
    (server,) = started
    assert server.url.startswith("http://127.0.0.1:") and server.process.poll() is not None  # stopped
    assert f"ready at {server.url}" in text and (tmp_path / "state" / "logs" / "endpoint-rules.log").is_file()
    report = json.loads((tmp_path / "pref" / "judge_report.json").read_text())
    assert report  # judged through the served rules
    record = json.loads((tmp_path / "state" / "stages" / "judge.json").read_text())
    assert record["status"] == "finished" and "${endpoints.rules.url}" in json.dumps(record["definition"])
    assert run_recipe(recipe)[::2] == (0, [])  # a new port next time does not make the stage look changed


def test_endpoints_are_stopped_when_the_stage_fails(tmp_path, started):
    recipe = judge_recipe(tmp_path, "sfmed pref rule-judge --host 127.0.0.1 --port ${port}")
    (tmp_path / "pref" / "responses.jsonl").write_text('{"id": "p1", "question": 3}\n')
    code, _, ran = run_recipe(recipe)
    assert (code, ran) == (1, ["judge"])
    assert started[0].process.poll() is not None
    assert json.loads((tmp_path / "state" / "stages" / "judge.json").read_text())["status"] == "started"


def test_an_endpoint_that_exits_fails_the_run_with_its_log(tmp_path):
    serve = f"{sys.executable} -c 'print(\"no GPU here\"); raise SystemExit(3)' 127.0.0.1 ${{port}}"
    code, text, ran = run_recipe(judge_recipe(tmp_path, serve))
    assert (code, ran) == (1, [])
    assert "endpoint rules exited with code 3 before answering" in text and "no GPU here" in text


def test_stage_io_declares_what_each_7b_stage_writes(project):
    recipe = load_recipe(RECIPE_7B)
    assert stage_io(recipe.stage("pref_select")).datasets_written[0] == (
        "saves/sfmed-7b/pref",
        "sfmed_dpo_selected",
        "saves/sfmed-7b/pref/selected.jsonl",
    )
    mix = stage_io(recipe.stage("pt_mix"))
    assert mix.configs_written["saves/sfmed-7b/data/mix/pt_mix.yaml"]["stage"] == "pt"
    assert stage_io(recipe.stage("dpo")).stale == ["saves/sfmed-7b/dpo/checkpoint-*"]


def test_each_preference_option_belongs_to_the_steps_it_changes():
    from sfmed_lf.preference.config import PreferenceConfig
    from sfmed_lf.preference.steps import CONNECTION_OPTIONS, STEP_OPTIONS

    assigned = {key for keys in STEP_OPTIONS.values() for key in keys} | set(CONNECTION_OPTIONS)
    assert assigned == {field.name for field in dataclasses.fields(PreferenceConfig) if field.init}


def test_another_option_reruns_only_the_preference_steps_that_read_it(project):
    recipe = load_recipe(RECIPE_7B)
    before = {name: stage_io(recipe.stage(name)).options for name in ("pref_sample", "pref_judge", "pref_select")}
    for name in before:
        stage = recipe.stage(name)
        changed = dataclasses.replace(stage, overrides={**stage.overrides, "flip_fraction": 0.2})
        assert (stage_io(changed).options == before[name]) == (name != "pref_select"), name


def test_a_follower_node_joins_each_training_stage_the_head_starts(tmp_path):
    """Node r > 0 runs the head's command of a started training stage with NODE_RANK=r, once, and leaves when the
    head's run ends (the head's records are written by hand here; tests/test_recipe_training.py runs real ones)."""
    recipe_path = write_recipe(
        tmp_path / "r.yaml",
        {
            "state_dir": str(tmp_path / "state"),
            "launch": {"NNODES": 2, "NODE_RANK": 0, "MASTER_ADDR": "127.0.0.1"},
            "stages": [{"name": "sft", "train": "examples/yaml/tiny/sft.yaml"}],
        },
    )
    recipe = load_recipe(recipe_path)
    runner = Runner(recipe, io.StringIO(), echo=False)
    marker = tmp_path / "joined.txt"
    joined = f"import os; open({str(marker)!r}, 'a').write(os.environ['NODE_RANK'] + os.environ['NNODES'])"
    runner.state.write_run({"run_id": "r1", "status": "running", "pid": 1})
    runner.state.write_record(
        recipe.stage("sft"),
        {
            "status": "started",
            "run_id": "r1",
            "attempt": "a1",
            "argv": [sys.executable, "-c", joined],
            "env": recipe.stage("sft").launch,
            "launch": recipe.stage("sft").launch,
            "command": "llamafactory-cli train examples/yaml/tiny/sft.yaml",
        },
    )

    def head_ends() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        runner.state.write_run({"run_id": "r1", "status": "finished", "pid": 1})

    threading.Thread(target=head_ends, daemon=True).start()
    assert Runner(recipe, io.StringIO(), echo=False).follow(node_rank=1) == 0
    assert marker.read_text() == "12"  # joined once, as node 1 of 2
    assert (tmp_path / "state" / "logs" / "sft.node1.log").is_file()


def test_a_training_directory_is_its_model_not_its_run_statistics(tmp_path):
    """Two runs that train the same weights write other runtimes: the later stages must not run again for that."""
    model = tmp_path / "dpo"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "config.json").write_text("{}")
    (model / "train_results.json").write_text('{"train_runtime": 64.5}')
    (model / "trainer_log.jsonl").write_text('{"loss": 0.69, "elapsed_time": "0:00:01"}\n')
    first = path_digest(model)
    assert set(first) == {"model.safetensors", "config.json"}
    for name in RUN_STATISTICS:
        (model / name).write_text("another run")
    assert path_digest(model) == first
    (model / "model.safetensors").write_bytes(b"other weights")
    assert path_digest(model) != first


def test_a_stage_asking_an_endpoint_reads_what_the_endpoint_serves(tmp_path, monkeypatch):
    """ask-records names only a URL; the model and the guard's database behind it are inputs all the same (a
    retrained model reruns the stage), and the refusal log the guarded server appends to is not."""
    from sfmed_lf.recipe.fingerprint import endpoint_inputs
    from sfmed_lf.recipe.runner import _current

    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "meta.json").write_text("{}")
    served = {"model_name_or_path": "model", "sfmed_privacy_db": "db", "sfmed_privacy_log": "refusals.jsonl"}
    (tmp_path / "guarded.yaml").write_text(yaml.safe_dump(served))
    (tmp_path / "refusals.jsonl").write_text("")
    (tmp_path / "other.jsonl").write_text("")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"lora")
    recipe = load_recipe(
        write_recipe(
            tmp_path / "recipe.yaml",
            {
                "state_dir": "state",
                "endpoints": {
                    "plain": {
                        "serve": "llamafactory-cli api --model_name_or_path model",
                        "env": {"API_HOST": "127.0.0.1", "API_PORT": "${port}"},
                    },
                    "guarded": {
                        "serve": "llamafactory-cli api guarded.yaml template=empty adapter_name_or_path=adapter "
                        "sfmed_privacy_log=other.jsonl",
                        "env": {"API_HOST": "127.0.0.1", "API_PORT": "${port}"},
                    },
                },
                "stages": [
                    {
                        "name": "ask",
                        "sfmed": "world ask-records w ${endpoints.plain.url} a.json",
                        "endpoints": ["plain"],
                    },
                    {
                        "name": "ask_guarded",
                        "sfmed": "world ask-records w ${endpoints.guarded.url} b.json",
                        "endpoints": ["guarded"],
                    },
                ],
            },
        )
    )
    plain, guarded = (endpoint_inputs(recipe, stage) for stage in recipe.stages)
    assert set(plain) == {"served model"}
    assert set(guarded) == {"served guarded.yaml", "served model", "served db", "served adapter"}
    (tmp_path / "refusals.jsonl").write_text('{"where": "answer"}\n')
    (tmp_path / "other.jsonl").write_text('{"where": "answer"}\n')
    assert [endpoint_inputs(recipe, stage) for stage in recipe.stages] == [plain, guarded]
    printed = [_current(recipe, stage, {})[3] for stage in recipe.stages]
    (tmp_path / "model" / "model.safetensors").write_bytes(b"retrained")
    assert endpoint_inputs(recipe, recipe.stages[0]) != plain and endpoint_inputs(recipe, recipe.stages[1]) != guarded
    assert all(_current(recipe, stage, {})[3] != before for stage, before in zip(recipe.stages, printed, strict=True))
