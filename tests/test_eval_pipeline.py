"""`sfmed eval` end to end: answers from `llamafactory-cli api` and from a local checkpoint, answers and judgments
from scripted OpenAI-compatible servers whose outcomes are known, resume after a kill, and the reports."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sfmed_lf.formats.items import load_items
from tests.helpers import REPO_ROOT, VENV_BIN, cli_env, read_json, run
from tests.servers import ScriptedChatServer, http_json, llamafactory_api

pytestmark = pytest.mark.slow
ITEM_FILES = [REPO_ROOT / "data" / "sfmed_eval_dialogue.jsonl", REPO_ROOT / "data" / "sfmed_eval_mcq.jsonl"]
ITEMS = [item for path in ITEM_FILES for item in load_items(path)]
DIALOGUE = [item for item in ITEMS if item.kind == "dialogue"]
MCQ = [item for item in ITEMS if item.kind == "mcq"]


def write_config(path: Path, **options) -> Path:
    config = {"items": [str(p) for p in ITEM_FILES], "max_new_tokens": 12, "request_timeout_s": 60, **options}
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def item_of(payload: dict) -> dict:
    """The item an evaluated model is asked about (its question is the last user message)."""
    last = payload["messages"][-1]["content"]
    return next(item for item in ITEMS if item.prompt.question in last)


def scripted_models(payload: dict) -> tuple[int, str]:
    """Model "good" answers with the reference (MCQ: the gold letter); model "mixed" does so for half the items."""
    item = item_of(payload)
    index = ITEMS.index(item)
    knows = payload["model"] == "good" or index % 2 == 0
    if item.kind == "mcq":
        return 200, f"经过分析，答案：{item.exam.answer}" if knows else "这道题我不确定。"
    return 200, item.reference if knows else "建议您多喝热水。"


def scripted_judge(payload: dict) -> tuple[int, str]:
    """9 for an answer that is the reference, 3 otherwise; no score at all for the gastroscopy item."""
    prompt = payload["messages"][-1]["content"]
    answer = prompt.split("[AI医生的回答]\n", 1)[1]
    reference = re.search(r"\[参考答案\]\n(.*?)\n\n\[AI医生的回答\]", prompt, re.S).group(1)
    if "胃镜" in prompt:
        return 200, "这个回答无法评价。"
    return 200, f"理由从略。评分：[[{9 if answer == reference else 3}]]"


def test_outcomes_judge_scores_and_accuracy_are_what_the_answers_imply(tmp_path):
    out = tmp_path / "eval"
    with ScriptedChatServer(scripted_models) as models, ScriptedChatServer(scripted_judge) as judge:
        config = write_config(
            tmp_path / "eval.yaml",
            output_dir=str(out),
            candidate_name="good",
            candidate_url=models.base_url,
            candidate_model="good",
            baseline_name="mixed",
            baseline_url=models.base_url,
            baseline_model="mixed",
            judge_url=judge.base_url,
            judge_model="scripted-judge",
            concurrency=3,
        )
        result = run(["sfmed", "eval", "all", str(config)])
        assert "wrote" in result.stdout
        requests_first_run = (len(models.requests), len(judge.requests))
        run(["sfmed", "eval", "all", str(config)])  # everything is on disk: no request is sent again
        assert (len(models.requests), len(judge.requests)) == requests_first_run
    mixed_knows = {item.id: ITEMS.index(item) % 2 == 0 for item in ITEMS}
    distinct_answers = len(DIALOGUE) + sum(not mixed_knows[item.id] for item in DIALOGUE)
    assert requests_first_run == (2 * len(ITEMS), distinct_answers), "identical answers are judged once (cache)"

    rouge = read_json(out / "rouge.json")
    expected_wins = sum(not mixed_knows[item.id] for item in DIALOGUE)
    assert rouge["summary"]["All"]["win"] == expected_wins
    assert rouge["summary"]["All"]["tie"] == len(DIALOGUE) - expected_wins and rouge["summary"]["All"]["loss"] == 0
    assert sum(rouge["summary"][d]["n"] for d in ("sfmed-single", "sfmed-multi")) == len(DIALOGUE)
    assert all(row["rouge_l_a"] == 1.0 for row in rouge["items"])

    judged = read_json(out / "judge.json")
    gastroscopy = [item.id for item in DIALOGUE if "胃镜" in item.prompt.question]
    assert sorted({row["id"] for row in judged["unparseable"]}) == gastroscopy and len(judged["unparseable"]) == 2
    scored = [item for item in DIALOGUE if item.id not in gastroscopy]
    assert judged["summary"]["All"]["unjudged"] == 1
    assert judged["summary"]["All"]["mean_score_a"] == 9.0
    expected_b = sum(9 if mixed_knows[item.id] else 3 for item in scored) / len(scored)
    assert judged["summary"]["All"]["mean_score_b"] == pytest.approx(expected_b)
    assert judged["summary"]["All"]["win"] == sum(not mixed_knows[item.id] for item in scored)

    accuracy = read_json(out / "mcq.json")["models"]
    assert accuracy["a"]["accuracy"]["All"]["accuracy"] == 1.0
    expected_b = sum(mixed_knows[item.id] for item in MCQ)
    assert accuracy["b"]["accuracy"]["All"]["correct"] == expected_b
    assert accuracy["b"]["accuracy"]["All"]["unextracted"] == len(MCQ) - expected_b

    report = (out / "report.md").read_text()
    for heading in ("Rouge-L F (char", "Reference-guided judge (scripted-judge", "Multiple-choice accuracy"):
        assert heading in report
    assert f"| All | 100.0% | {100 * expected_b / len(MCQ):.1f}% |" not in report  # rows are per model
    assert "| good | 100.0% | 100.0% | 100.0% |" in report
    numbers = read_json(out / "report.json")
    assert numbers["rouge"]["All"]["win"] == expected_wins
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_models_answer_through_llamafactory_api_and_from_a_checkpoint(pipeline, tmp_path):
    out = tmp_path / "eval"
    with llamafactory_api(pipeline["sft"], tmp_path / "api.log", "--max_new_tokens", "12") as base_url:
        served = http_json(f"{base_url}/models")["data"][0]["id"]
        config = write_config(
            tmp_path / "eval.yaml",
            output_dir=str(out),
            candidate_name="SFT via llamafactory-cli api",
            candidate_url=base_url,
            candidate_model=served,
            baseline_name="CPT checkpoint",
            baseline_model_name_or_path=str(pipeline["pt"]),
            batch_size=7,
        )
        run(["sfmed", "eval", "all", str(config)])
    for label in ("a", "b"):
        lines = [json.loads(line) for line in (out / "answers" / f"{label}.jsonl").read_text().splitlines()]
        assert sorted(line["id"] for line in lines) == sorted(item.id for item in ITEMS)
        assert all(isinstance(line["response"], str) for line in lines)
    rouge = read_json(out / "rouge.json")["summary"]["All"]
    assert rouge["win"] + rouge["tie"] + rouge["loss"] == len(DIALOGUE)
    mcq = read_json(out / "mcq.json")["models"]
    assert {mcq[label]["accuracy"]["All"]["n"] for label in ("a", "b")} == {len(MCQ)}
    assert (out / "report.md").is_file() and (out / "report.png").is_file()


def test_generation_killed_midway_resumes_without_losing_or_doubling(tmp_path):
    def slow(payload: dict) -> tuple[int, str]:
        time.sleep(0.2)
        return scripted_models(payload)

    out = tmp_path / "eval"
    with ScriptedChatServer(slow) as server:
        config = write_config(
            tmp_path / "eval.yaml",
            output_dir=str(out),
            candidate_name="good",
            candidate_url=server.base_url,
            candidate_model="good",
            concurrency=1,
        )
        answers = out / "answers" / "a.jsonl"
        command = [str(VENV_BIN / "sfmed"), "eval", "generate", str(config)]
        process = subprocess.Popen(command, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (answers.exists() and len(answers.read_text().splitlines()) >= 5):
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        written_before = len(answers.read_text().splitlines())
        assert written_before < len(ITEMS), "killed before the end"
        run(command)
    ids = [json.loads(line)["id"] for line in answers.read_text().splitlines()]
    assert sorted(ids) == sorted(item.id for item in ITEMS), "nothing lost, nothing doubled"
    assert len(server.requests) <= len(ITEMS) + 1, "only the request in flight at the kill is asked again"
    result = run([*command, "max_new_tokens=64"], check=False)
    assert result.returncode == 2 and "holds results of another model or setting (changed: max_new_tokens)" in (
        result.stderr
    ), "answers produced under other settings are never mixed into a resumed run"


def test_steps_out_of_order_and_bad_items_give_one_line_errors(tmp_path):
    config = write_config(
        tmp_path / "eval.yaml",
        output_dir=str(tmp_path / "eval"),
        candidate_model_name_or_path="m",
        baseline_model_name_or_path="n",
    )
    result = run(["sfmed", "eval", "rouge", str(config)], check=False)
    assert result.returncode == 2 and "run `sfmed eval generate` first" in result.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "dataset": "d", "kind": "dialogue", "question": "q"}\n')
    result = run(["sfmed", "eval", "generate", str(config), f"items=[{bad}]"], check=False)
    assert result.returncode == 2 and f"{bad}:1: missing field 'reference'" in result.stderr
    result = run(["sfmed", "eval", "judge", str(config)], check=False)
    assert result.returncode == 2 and "judge_url is not set" in result.stderr
