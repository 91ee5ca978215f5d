"""What each stage does to the tiny model trained on the generated world, asserted as effect sizes.

The models come from the session fixture ``world_models`` (world -> tiny model -> mix -> CPT -> SFT, as the demo
trains them). Thresholds sit well below what seed 0 measured (given beside each); other seeds were not measured.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfmed_lf.world.judge import world_judge_server
from sfmed_lf.world.report import chance_accuracy
from tests.helpers import read_json, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # the first run trains CPT and SFT (~11 min idle)


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


def test_sft_answers_exam_items_in_the_extractable_form_the_cpt_model_never_uses(sft_vs_pt):
    mcq = read_json(sft_vs_pt / "mcq.json")["models"]
    sft, cpt = mcq["a"]["accuracy"]["All"], mcq["b"]["accuracy"]["All"]
    assert sft["unextracted"] <= 0.05 * sft["n"], mcq["a"]["unextracted"][:5]  # measured: 1 of 224
    assert cpt["unextracted"] >= 0.8 * cpt["n"], "the CPT model was never taught the answer form"  # measured: 217


@pytest.mark.xfail(
    strict=True,
    reason="not reached: the default tiny model (128 wide, 4 layers, 20 CPT epochs, 6 SFT epochs) answers the held-out "
    "exam items at chance (0.174 against 0.193, seed 0): it learns the answer form, not the facts of the pre-training "
    "text (issue 13). XPASS means it now learns: drop this mark.",
)
def test_sft_answers_held_out_exam_items_well_above_chance(world_models, sft_vs_pt):
    mcq = read_json(sft_vs_pt / "mcq.json")["models"]
    chance = chance_accuracy(items(world_models["world"] / "eval_mcq.jsonl"))
    sft = mcq["a"]["accuracy"]["All"]
    assert sft["accuracy"] >= 2 * chance, (sft, chance)


def test_sft_beats_cpt_on_rouge_and_judge(sft_vs_pt):
    rouge = read_json(sft_vs_pt / "rouge.json")["summary"]["All"]
    # measured (seed 0): 116 wins, 18 losses of 134 (win rate 0.87); consultations 66 : 1
    assert rouge["win"] >= 3 * rouge["loss"] and rouge["win_rate"] >= 0.6, rouge
    judge = read_json(sft_vs_pt / "judge.json")
    every = judge["summary"]["All"]
    assert not judge["unparseable"], judge["unparseable"][:3]
    # measured: 28 wins, 1 loss, 105 ties; mean score 1.44 against 1.02 (the facts are mostly wrong for both)
    assert every["win"] >= 5 * max(every["loss"], 1) and every["mean_score_a"] >= every["mean_score_b"] + 0.2, every
    report = (sft_vs_pt / "report.md").read_text(encoding="utf-8")
    assert "Reference-guided judge (kb-facts" in report and "Multiple-choice accuracy" in report
