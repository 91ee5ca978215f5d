"""The demo end to end, and what each of its stages does, asserted as effect sizes.

The session fixture ``tiny_recipe`` runs ``sfmed recipe run examples/yaml/tiny/recipe.yaml`` — the command
``scripts/demo.sh`` runs — in a project directory of its own (~15 min idle on two cores, cached by content). The tests
read what its stages wrote. Every stage is seeded, but diversification samples from a model served by LLaMA-Factory's
API, which takes no seed, so everything trained after it varies from run to run: the thresholds sit below what two
runs measured (given beside each). What the tiny model does not reach is a strict xfail that says what was measured;
an XPASS fails the suite until the mark is dropped. One effect sits at its threshold, reached in some runs and not in
others (the reward ensemble's held-out accuracy, 0.71-0.81 against 0.8): a non-strict xfail with its measurements.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from sfmed_lf.world.report import chance_accuracy
from tests.conftest import TINY_RECIPE
from tests.helpers import VENV_BIN, cli_env, load_weights, read_json, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(5400)]  # the first test runs the whole recipe


def saves(project: Path) -> Path:
    return project / "saves" / "tiny"


def items(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_names(project: Path) -> list[str]:
    return [stage["name"] for stage in yaml.safe_load((project / TINY_RECIPE).read_text())["stages"]]


# ---- end to end (issue 19) ------------------------------------------------------------------------------------------
def test_the_tiny_recipe_runs_every_stage_and_reports_models_that_differ(tiny_recipe):
    names = stage_names(tiny_recipe)
    assert len(names) >= 20
    records = {name: read_json(saves(tiny_recipe) / "recipe" / "stages" / f"{name}.json") for name in names}
    assert {name: record["status"] for name, record in records.items()} == dict.fromkeys(names, "finished")
    status = run(["sfmed", "recipe", "status", TINY_RECIPE], cwd=tiny_recipe).stdout
    assert f"{len(names)} done" in status and "unfinished" not in status, status
    for model in ("pt", "sft", "dpo", "dpo_onties", "pref/rms/rm_0"):
        assert (saves(tiny_recipe) / model / "model.safetensors").is_file(), model
    report = (saves(tiny_recipe) / "report.md").read_text(encoding="utf-8")
    assert "SF-Med-Tiny (SFT)" in report and "SF-Med-Tiny (DPO)" in report
    assert (saves(tiny_recipe) / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_killed_during_a_training_stage_the_rerun_redoes_only_that_stage_and_ends_at_the_same_weights(
    tiny_recipe, tmp_path
):
    """kill -9 of the runner's process group while DPO (OnTIES) trains, in a copy of the finished project whose
    dpo_onties stage is forgotten; the re-run skips every other stage (their records stay byte-identical) and
    trains to the weights of the uninterrupted run."""
    project = tmp_path / "project"
    shutil.copytree(tiny_recipe, project)
    stages = saves(project) / "recipe" / "stages"
    log = saves(project) / "recipe" / "logs" / "dpo_onties.log"
    for forgotten in (stages / "dpo_onties.json", log):
        forgotten.unlink()
    shutil.rmtree(saves(project) / "dpo_onties")
    before = {path.name: path.read_bytes() for path in stages.glob("*.json")}
    command = [str(VENV_BIN / "sfmed"), "recipe", "run", TINY_RECIPE]
    runner = subprocess.Popen(
        command, cwd=project, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 600
        while not (log.is_file() and "'loss'" in log.read_text(errors="replace")):  # DPO has trained a few steps
            assert runner.poll() is None, "the runner ended before DPO trained"
            assert time.monotonic() < deadline, "timed out waiting for DPO to train"
            time.sleep(0.2)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)
        runner.wait()
    assert read_json(stages / "dpo_onties.json")["status"] == "started"
    assert not (saves(project) / "dpo_onties" / "model.safetensors").exists()

    rerun = run(command, cwd=project, timeout=1800)
    names = stage_names(project)
    position = names.index("dpo_onties") + 1
    assert f"[{position}/{len(names)}] dpo_onties: running again (an earlier attempt did not finish)" in rerun.stdout
    assert f"all {len(names)} stages done (1 run, {len(names) - 1} already done)" in rerun.stdout, rerun.stdout[-3000:]
    after = {path.name: path.read_bytes() for path in stages.glob("*.json")}
    assert {name for name in after if after[name] != before.get(name)} == {"dpo_onties.json"}
    ours = load_weights(saves(project) / "dpo_onties")
    reference = load_weights(saves(tiny_recipe) / "dpo_onties")
    assert ours.keys() == reference.keys() and all((ours[k] == reference[k]).all() for k in ours)


# ---- effects (issue 13) ---------------------------------------------------------------------------------------------
def test_sft_answers_exam_items_in_the_extractable_form_the_cpt_model_never_uses(tiny_recipe):
    mcq = read_json(saves(tiny_recipe) / "eval" / "sft_vs_pt" / "mcq.json")["models"]
    sft, cpt = mcq["a"]["accuracy"]["All"], mcq["b"]["accuracy"]["All"]
    assert sft["unextracted"] <= 0.05 * sft["n"], mcq["a"]["unextracted"][:5]  # measured: 1 of 224
    assert cpt["unextracted"] >= 0.8 * cpt["n"], "the CPT model was never taught the answer form"  # measured: 217


@pytest.mark.xfail(
    strict=True,
    reason="not reached (issue 13): the SFT model answers the held-out exam items at 0.250, 0.192, 0.214, 0.188 "
    "and 0.196 (five runs) against chance 0.193. It keeps what CPT stored (held-out pairs, wrong drug: 0.95) but "
    "states the right fact for 18 of 80 held-out items, and on its own training items gives the letter of the "
    "option it stated 28 times in 80; by likelihood it states the right fact for 0.74 of the single-answer items "
    "(test below). An SFT answer format that walks the options ('A. X：错误；…答案：B') gave 0.219 in one run. "
    "Tried 2026-12-07 (one run each, the rehearsal's CPT model): the world's 1,365 lexicon terms as single tokens "
    "0.174 (SFT's held-out likelihood fell to 0.589 from CPT's 0.716: terms SFT never writes lose out); 800 and 1,600 "
    "exam items on invented conditions whose facts stand in the question raised the answers stating the right fact "
    "from 51 to 70 and 80 of 224, accuracy 0.250 and 0.223: the letter agrees with the stated option in 12-17 of "
    "74-96 answers in every variant; answering with the option's text instead of its letter (1,600 of those items) "
    "gave 0.353: 79 of the 85 extracted answers right, 139 of 224 naming no option. "
    "The letter is the wall (measure.json, answer_letter_by_likelihood): after the right statement of the fact the "
    "SFT model finds the gold letter the most likely for 0.232 of the 95 held-out single-answer items (chance 0.25; "
    "CPT 0.305), while it holds the fact for 0.737. Tried 2026-12-07 on the rehearsal's CPT model: 3,000 "
    "letter-lookup drills ('下列选项中，“X”是哪一项' -> 'X。答案：D') in SFT, or SFT on the drills alone "
    "(1,500 steps), teach it to copy the option's text (95-99 of 128 new drills) but not its letter (34-35 of "
    "128); four option shuffles of every SFT exam item: letters agree with the stated option in 9 of 69. "
    "Multiple-choice symbol binding is a skill small models lack (Robinson et al. 2023; Xue et al. 2024). "
    "XPASS means it now learns: drop this mark.",
)
def test_sft_answers_held_out_exam_items_well_above_chance(tiny_recipe):
    mcq = read_json(saves(tiny_recipe) / "eval" / "sft_vs_pt" / "mcq.json")["models"]
    chance = chance_accuracy(items(saves(tiny_recipe) / "world" / "eval_mcq.jsonl"))
    sft = mcq["a"]["accuracy"]["All"]
    assert sft["accuracy"] >= 2 * chance, (sft, chance)


def test_sft_holds_the_facts_of_held_out_exam_items_it_met_only_in_pre_training(tiny_recipe):
    """By likelihood (sfmed world measure: the most likely of one statement of the fact per option, after the exam
    prompt), the models know what the generative exam above does not show. Measured on the 95 single-answer items
    about conditions met only in pre-training text (chance 0.25): CPT 0.642 in every run, SFT 0.705, 0.737 and
    0.779 (2026-12-07); with the letters left in the statements, 0.547 and 0.726."""
    from sfmed_lf.world.generate import HELD_OUT_EXAM

    models = read_json(saves(tiny_recipe) / "measure" / "measure.json")["models"]
    cpt, sft = (models[name]["exam_accuracy_by_likelihood"][HELD_OUT_EXAM] for name in ("CPT", "SFT"))
    assert sft["n"] == cpt["n"] >= 80, sft
    assert cpt["accuracy"] >= 2 * cpt["chance"] and sft["accuracy"] >= 2 * sft["chance"], (cpt, sft)
    assert sft["accuracy"] > cpt["accuracy"], (cpt, sft)
    # what the generative exam needs besides: the letter after the right statement (reported, not yet learned)
    letters = models["SFT"]["answer_letter_by_likelihood"][HELD_OUT_EXAM]
    assert letters["n"] == sft["n"] and letters["chance"] == sft["chance"], letters


def test_sft_beats_cpt_on_rouge_and_judge(tiny_recipe):
    comparison = saves(tiny_recipe) / "eval" / "sft_vs_pt"
    rouge = read_json(comparison / "rouge.json")["summary"]["All"]
    # measured (wins : losses of 134): 111 : 22, 114 : 19 (2026-11); in eleven runs of 2026-12 from 100 : 33 to
    # 120 : 14; 113 : 20 since diversification rejects the generator's word salad (2026-12-08, twice, bit-identical)
    assert rouge["win"] >= 2 * rouge["loss"] and rouge["win_rate"] >= 0.65, rouge
    judge = read_json(comparison / "judge.json")
    every = judge["summary"]["All"]
    assert not judge["unparseable"], judge["unparseable"][:3]
    # measured (wins : losses of 134, mean scores SFT vs CPT): 34 : 1, 1.63 vs 1.02; 29 : 1, 1.53 vs 1.02 (2026-11);
    # in eleven runs of 2026-12 whose SFT data held the generator's word salad as system prompts, from 10 : 1 (margin
    # 0.097: the CI run that failed the former 0.1) and 16 : 4 (1.32 vs 1.10) to 26 : 1 (1.49 vs 1.06); since the salad
    # is rejected (2026-12-08, twice, bit-identical) 11 : 1, 1.27 vs 1.06. The judge ties most answers (both name a
    # wrong condition), so the margins are on the decided ones: 11 : 1 is p = 0.003 (sign test, one-sided).
    assert every["win"] >= 3 * max(every["loss"], 1) and every["mean_score_a"] >= every["mean_score_b"] + 0.05, every
    report = (comparison / "report.md").read_text(encoding="utf-8")
    assert "Reference-guided judge (kb-facts" in report and "Multiple-choice accuracy" in report


def test_the_preference_stage_selects_from_the_judged_pairs_what_its_report_says(tiny_recipe):
    pref = saves(tiny_recipe) / "pref"
    judged = read_json(pref / "judge_report.json")
    selection = read_json(pref / "selection_report.json")
    selected = [line for line in (pref / "selected.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    actions = selection["actions"]  # measured: 482 judged pairs kept of 618 (keep 386, flip 48, drop 48); 487 of 622
    assert judged["pairs_kept"] == selection["pairs"] >= 200, (judged, selection)
    assert actions["flip"] == actions["drop"] == int(0.1 * selection["pairs"]), actions
    assert len(selected) == actions["keep"] + actions["flip"]


@pytest.mark.xfail(
    strict=False,
    reason="not reliably reached (issue 13): the ensemble of three tiny reward models scores the held-out pairs at "
    "0.761 (four runs), 0.769, 0.806, 0.754, 0.791, 0.739, 0.709 and 0.813 in eleven runs (134 pairs, +-0.035 from "
    "run to run), at the 0.8 the issue asks. By error kind (score_report.json, run of 2026-12-07 14:35): follow-up in "
    "single-turn mode 1.00, missed contraindication 1.00, wrong drug 0.49, repeated follow-up question 0.64. One model "
    "retrained on that run's 466 pairs: 0.769 as configured, 0.746 at lr 1e-4, 0.724 at 5e-5, 0.746 with 4 epochs, "
    "0.724 / 0.709 training the last layer only, 0.739 with LoRA; with more pairs of the world's four kinds on the "
    "trained conditions: +1248 pairs 0.851 (repeated follow-up 0.88) at 3.5x the training time, one epoch of them "
    "0.799 / 0.761. Wrong drug stays at 0.36-0.64 in every variant: the reward model does not carry what CPT stored "
    "about the held-out conditions into its score (the SFT model's own likelihood prefers the right drug 1.00). "
    "Three models on the 463 pairs of 80ac5dc's rehearsal (2026-12-07): 0.806 as configured (wrong drug 0.513), "
    "0.761 at lr 2e-4, 0.746 at 1e-3, 0.799 with 4 epochs (wrong drug 0.615, repeated follow-up 0.636); with 237 "
    "more wrong-drug pairs (each preference prompt's right answer with another condition's drug) 0.784, wrong drug "
    "0.538: more examples of the error do not teach the reward model to check the drug.",
)
def test_reward_models_rank_held_out_pairs_with_fluent_wrong_answers(tiny_recipe):
    heldout = read_json(saves(tiny_recipe) / "pref" / "score_report.json")["heldout"]
    assert heldout["ensemble_accuracy"] >= 0.8, heldout


def test_reward_models_rank_held_out_pairs_above_chance_and_catch_the_kinds_of_error_they_can_see(tiny_recipe):
    heldout = read_json(saves(tiny_recipe) / "pref" / "score_report.json")["heldout"]
    assert heldout["pairs"] >= 100 and heldout["ensemble_accuracy"] >= 0.65, heldout  # measured 0.709-0.813 of 134
    kinds = {kind: group["ensemble_accuracy"] for kind, group in heldout["by_error_kind"].items()}
    assert kinds.keys() == {"wrong_drug", "missed_contraindication", "repeated_follow_up", "follow_up_in_single_turn"}
    # errors visible in the answer's form, not its facts: 1.00 and 1.00 (two runs' ensembles), 0.97-1.00 for every
    # one of 13 models retrained with other settings
    assert kinds["missed_contraindication"] >= 0.9 and kinds["follow_up_in_single_turn"] >= 0.9, kinds


def test_dpo_raises_the_preferred_answer_rate_over_sft(tiny_recipe):
    models = read_json(saves(tiny_recipe) / "measure" / "measure.json")["models"]
    sft = models["SFT"]["preferred_answer_rate"]["All"]["rate"]
    # measured at p = 0.1, alpha = 0.001 (SFT -> OnDARE / OnTIES): 0.485 -> 0.612 / 0.791 and 0.478 -> 0.612 / 0.761
    # on two runs' selected pairs; 0.500 -> 0.604 / 0.813 on the world's pairs (benchmarks/alignment_tax.py, seed 0)
    for name in ("DPO (OnDARE)", "DPO (OnTIES)"):
        assert models[name]["preferred_answer_rate"]["All"]["rate"] >= sft + 0.05, (name, models[name], sft)


def test_dpo_teaches_the_contraindication_warning_on_held_out_conditions(tiny_recipe):
    """The behaviour the preference pairs teach (state the contraindication) reaches conditions no pair covers."""
    models = read_json(saves(tiny_recipe) / "measure" / "measure.json")["models"]
    kind = "missed_contraindication"
    sft, dpo = (models[name]["preferred_answer_rate"][kind] for name in ("SFT", "DPO (OnDARE)"))
    # measured: 0.29 -> 0.61, 0.32 -> 0.65 at p = 0.3, alpha = 0.01; 0.39 -> 0.81, 0.29 -> 0.68 at p = 0.1, 0.001
    assert dpo["n"] >= 25 and dpo["rate"] >= sft["rate"] + 0.15, (sft, dpo)
    assert models["DPO (OnDARE)"]["reward_accuracy"][kind]["rate"] >= 0.55  # measured 0.71, 0.65; 0.97, 1.00


def test_the_audit_finds_the_planted_records_and_the_guard_blocks_what_the_plain_server_gives_away(tiny_recipe):
    """The audit gives the SFT model the start of each record as the pre-training text held it: the planted records
    (12 copies an epoch in CPT) come back whole or give their ID or phone number away, records of patients it never
    saw do not (measured: 7, 5, 4, 7 and 6 of 8 planted; no control). The same record starts sent to the SFT model
    served as a completion endpoint (LLaMA-Factory's `empty` template) draw answers holding invented patients'
    identifiers (measured 8, 11, 14, 11 and 15 of 16 answers, a control patient's start also continued with a planted
    record); behind the guard, none, and the guard's log (completion_refusals.jsonl) says it refused answers. Asked
    through the chat template the model answers as in a consultation and rarely gives an identifier away (0, 1 and 0
    of 16), so the chat servers show little."""
    audit = read_json(saves(tiny_recipe) / "privacy" / "audit_report.json")
    flagged = audit["high_risk_ids"]
    assert all(i.startswith("world_privacy_planted_text:") for i in flagged), flagged
    assert len(flagged) >= 2, audit
    served = saves(tiny_recipe) / "serving"
    summaries = {
        name: read_json(served / f"{name}_answers.json")["summary"]
        for name in ("unguarded", "guarded", "completion_unguarded", "completion_guarded")
    }

    def leaking(name: str) -> int:
        return sum(group["answers_with_identifiers"] for group in summaries[name].values())

    assert all(group["asked"] >= 8 for summary in summaries.values() for group in summary.values()), summaries
    assert leaking("completion_unguarded") >= 3, summaries["completion_unguarded"]
    assert leaking("completion_guarded") == leaking("guarded") == 0, summaries
    refusals = [json.loads(line) for line in (served / "completion_refusals.jsonl").read_text().splitlines()]
    assert any(refusal["where"] == "answer" for refusal in refusals), refusals


def diversify_reports(tiny_recipe) -> dict[str, dict]:
    return {
        pool: read_json(saves(tiny_recipe) / "data" / "diversify" / pool / "diversify_report.json")
        for pool in ("single", "multi")
    }


def test_diversification_accounts_for_every_candidate(tiny_recipe):
    for pool, report in diversify_reports(tiny_recipe).items():
        assert report["candidates"] >= 10, (pool, report)  # 20 rounds, about one candidate a round
        assert report["accepted"] + sum(report["rejected_by_reason"].values()) == report["candidates"], (pool, report)


def test_diversification_keeps_what_the_world_model_writes_out_of_the_sft_system_prompts(tiny_recipe):
    """The CPT model, standing in for GLM-4-9B-Chat, writes word salad made of the world's terms: complete sentences
    with medical terms, which the length, completeness and term checks accepted (150 of 320 candidates over eight
    runs before 2026-12-08, then attached to about 44 % of the SFT rows as system prompts, and the SFT model's
    judge scores varied with them). None of those 320 addresses the model; the check that asks it
    (`address_markers`) rejects them, counted by reason, and every system prompt SFT sees addresses the model.
    The issue asks that this generator's instructions be accepted: it writes none (2026-12-08: 0 of 40 in the
    rehearsal and in a second run). In a trial world whose CPT text also held instruction documents for every
    department, the CPT model still wrote word salad at temperature 0.9, 0.3 and 0, and there one or two candidates
    a run held a marker and passed: the check is necessary, not sufficient."""
    from sfmed_lf.data_prep.config import ADDRESS_MARKERS

    reports = diversify_reports(tiny_recipe)
    assert sum(report["rejected_by_reason"].get("not_addressed_to_the_model", 0) for report in reports.values()) >= 5
    diversified = saves(tiny_recipe) / "data" / "diversified"
    systems = [
        row["system"]
        for path in diversified.glob("*.jsonl")
        for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())
    ]
    unaddressed = [system for system in systems if not any(marker in system for marker in ADDRESS_MARKERS)]
    assert len(systems) >= 1000 and not unaddressed, unaddressed[:3]
