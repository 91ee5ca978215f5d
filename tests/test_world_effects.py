"""What each stage does to the tiny model trained on the generated world, asserted as effect sizes.

The models come from the session fixture ``world_models`` (world -> tiny model -> mix -> CPT -> SFT, as the demo
trains them). Thresholds sit well below the worst of several seeds; the measurements behind them are in
docs/world.md ("Effect sizes over seeds").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfmed_lf.world.judge import world_judge_server
from sfmed_lf.world.report import chance_accuracy
from tests.helpers import read_json, run

pytestmark = pytest.mark.slow


def items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def sft_vs_pt(world_models, tmp_path_factory) -> Path:
    """`sfmed eval all` of the SFT model against the CPT model on the world's evaluated items, judged by the
    knowledge-base judge."""
    world, out = world_models["world"], tmp_path_factory.mktemp("eval") / "sft_vs_pt"
    with world_judge_server(world) as judge:
        run(
            [
                "sfmed",
                "eval",
                "all",
                "examples/yaml/tiny/eval.yaml",
                f"items=[{world / 'eval_dialogue.jsonl'}, {world / 'eval_mcq.jsonl'}]",
                f"candidate_model_name_or_path={world_models['sft']}",
                f"baseline_model_name_or_path={world_models['pt']}",
                f"output_dir={out}",
                f"judge_url={judge.base_url}",
            ]
        )
    return out


def test_sft_answers_held_out_exam_items_well_above_chance_and_the_cpt_model(world_models, sft_vs_pt):
    mcq = read_json(sft_vs_pt / "mcq.json")["models"]
    chance = chance_accuracy(items(world_models["world"] / "eval_mcq.jsonl"))
    sft, cpt = mcq["a"]["accuracy"]["All"], mcq["b"]["accuracy"]["All"]
    assert sft["accuracy"] >= 2 * chance + 0.1, (sft, chance)
    assert sft["accuracy"] >= cpt["accuracy"] + 0.2, (sft, cpt)
    assert sft["unextracted"] <= 0.05 * sft["n"], mcq["a"]["unextracted"][:5]
    # facts met only in pre-training text are recalled too, not only those the SFT dialogues repeated
    assert mcq["a"]["accuracy"]["world-exam (pre-training only)"]["accuracy"] >= 2 * chance


def test_sft_beats_cpt_on_rouge_and_judge(sft_vs_pt):
    rouge = read_json(sft_vs_pt / "rouge.json")["summary"]["All"]
    assert rouge["win"] >= 3 * rouge["loss"] and rouge["win_rate"] >= 0.6, rouge
    judge = read_json(sft_vs_pt / "judge.json")
    every = judge["summary"]["All"]
    assert not judge["unparseable"], judge["unparseable"][:3]
    assert every["mean_score_a"] >= every["mean_score_b"] + 2.0, every
    report = (sft_vs_pt / "report.md").read_text(encoding="utf-8")
    assert "Reference-guided judge (kb-facts" in report and "Multiple-choice accuracy" in report
