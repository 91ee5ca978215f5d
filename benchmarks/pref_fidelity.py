"""Fidelity of the preference-strength flip (SF-Med §3.3) on a synthetic preference set with known labels.

Each pair's true chosen answer is a real medical answer to its question; the true rejected answer is, with
``--negatives shuffled``, the same characters in a random order (same length and vocabulary, no sentence
structure: an easy signal), or with ``--negatives mismatched`` a fluent answer to another question (only relevance
separates them). With ``--source world`` the pairs are the generated world's preference candidates: a correct
answer against a fluent one with a wrong fact (wrong drug, missed contraindication, a follow-up question where
none belongs, a repeated one) — ``--negatives fluent``. A known fraction of pairs is flipped on purpose.
The reward-model ensemble is trained on the noisy pairs with the real `sfmed pref train-rms | score | select`
steps, from ``--init`` (default: a random-init tiny model; for the world, its SFT model is what can tell a wrong
fact); the flip rule is run with flip_fraction equal to the planted fraction and no drop. Reported: precision and
recall of the flipped pairs against the planted ones, for the ensemble mean and for each single model.

    python benchmarks/pref_fidelity.py                      # bundled answers (about 120 pairs), random init
    python benchmarks/pref_fidelity.py --source realdata    # ../shared/realdata answers (up to --pairs)
    python benchmarks/pref_fidelity.py --negatives mismatched
    python benchmarks/pref_fidelity.py --source world --world saves/tiny/world --init saves/tiny/sft

Target: precision >= 0.8 with the ensemble and fluent negatives.
Results: benchmarks/results/pref_fidelity_<source>_<negatives>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sfmed_lf.formats.reading import read_rows  # noqa: E402
from sfmed_lf.preference.pairs import PAIRS_DATASET, register_pairs  # noqa: E402
from sfmed_lf.preference.selection import FLIP, select_actions, strengths  # noqa: E402
from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model  # noqa: E402

REALDATA = ROOT.parent / "shared" / "realdata"


def bundled_answers() -> list[tuple[str, str]]:
    answers = []
    for row in json.loads((ROOT / "data" / "sfmed_sft_single.json").read_text(encoding="utf-8")):
        answers.append((row["instruction"], row["output"]))
    for row in json.loads((ROOT / "data" / "sfmed_sft_multiturn.json").read_text(encoding="utf-8")):
        turns = row["conversations"]
        answers += [(q["value"], a["value"]) for q, a in zip(turns[::2], turns[1::2], strict=False)]
    for _, row in read_rows(ROOT / "data" / "sfmed_pt_medical.jsonl"):
        answers.append(("请介绍一下相关的医学知识。", row["text"]))
    return answers


def realdata_answers() -> list[tuple[str, str]]:
    answers = []
    for _, row in read_rows(REALDATA / "zhongjing_cmtmedqa_test.jsonl"):
        answers.append((row["instruction"], row["output"]))
    for _, row in read_rows(REALDATA / "toyhom_cmdd_im_sample.jsonl"):
        answers.append((row["ask"] or row["title"], row["answer"]))
    for _, row in read_rows(REALDATA / "medicalgpt_sft_medical.jsonl"):
        turns = row["conversations"]
        answers.append((turns[0]["value"], turns[1]["value"]))
    return answers


def world_pairs(world: Path) -> list[tuple[str, list[list[str]], str, str, str]]:
    """(question, history, system, correct answer, fluent wrong answer) of each world preference prompt."""
    pairs = []
    for row in json.loads((world / "pref_prompts.json").read_text(encoding="utf-8")):
        wrong = next(c for c in row["candidates"] if c != row["output"])
        pairs.append((row["instruction"], row["history"], row["system"], row["output"], wrong))
    return pairs


def build_world_pairs(world: Path, count: int, flip: float, seed: int) -> tuple[list[dict], set[str]]:
    rng = random.Random(seed)
    usable = world_pairs(world)
    rng.shuffle(usable)
    usable = usable[:count]
    planted = set(rng.sample([f"s{i}" for i in range(len(usable))], round(flip * len(usable))))
    rows = []
    for i, (question, history, system, correct, wrong) in enumerate(usable):
        chosen, rejected = (wrong, correct) if f"s{i}" in planted else (correct, wrong)
        rows.append(
            {
                "id": f"s{i}",
                "instruction": question,
                "input": "",
                "history": history,
                "system": system,
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return rows, planted


def build_pairs(
    answers: list[tuple[str, str]], count: int, flip: float, seed: int, negatives: str
) -> tuple[list[dict], set[str]]:
    rng = random.Random(seed)
    usable = [(q, a) for q, a in answers if 20 <= len(a) <= 300 and len(set(a)) > 10]
    rng.shuffle(usable)
    usable = usable[:count]
    planted = set(rng.sample([f"s{i}" for i in range(len(usable))], round(flip * len(usable))))
    rows = []
    for i, (question, answer) in enumerate(usable):
        if negatives == "mismatched":
            negative = usable[(i + 1 + rng.randrange(len(usable) - 1)) % len(usable)][1]
        else:
            shuffled = list(answer)
            while "".join(shuffled) == answer:
                rng.shuffle(shuffled)
            negative = "".join(shuffled)
        chosen, rejected = answer, negative
        if f"s{i}" in planted:
            chosen, rejected = rejected, chosen
        rows.append(
            {
                "id": f"s{i}",
                "instruction": question,
                "input": "",
                "history": [],
                "system": "",
                "chosen": chosen,
                "rejected": rejected,
            }
        )
    return rows, planted


def precision_recall(flagged: set[str], planted: set[str]) -> dict[str, float]:
    hits = len(flagged & planted)
    return {
        "precision": hits / len(flagged) if flagged else 0.0,
        "recall": hits / len(planted) if planted else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("bundled", "realdata", "world"), default="bundled")
    parser.add_argument("--world", default="saves/tiny/world", help="sfmed world generate output (--source world)")
    parser.add_argument("--init", help="model the reward models start from (default: a random-init tiny model)")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument(
        "--negatives",
        choices=("shuffled", "mismatched", "fluent"),
        default=None,
        help="default: shuffled; fluent (the only kind) for --source world",
    )
    parser.add_argument("--flip", type=float, default=0.1)
    parser.add_argument("--models", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="saves/bench/pref_fidelity")
    arguments = parser.parse_args()

    work = ROOT / arguments.work
    shutil.rmtree(work, ignore_errors=True)  # an experiment starts from nothing (the steps would resume)
    if arguments.source == "world":
        if arguments.negatives not in (None, "fluent"):
            parser.error("--source world has fluent negatives only")
        arguments.negatives = "fluent"
        pairs, planted = build_world_pairs(ROOT / arguments.world, arguments.pairs, arguments.flip, arguments.seed)
    else:
        if arguments.negatives == "fluent":
            parser.error("--negatives fluent needs --source world")
        arguments.negatives = arguments.negatives or "shuffled"
        answers = realdata_answers() if arguments.source == "realdata" else bundled_answers()
        pairs, planted = build_pairs(answers, arguments.pairs, arguments.flip, arguments.seed, arguments.negatives)
    out = work / "pref"
    out.mkdir(parents=True, exist_ok=True)
    (out / "pairs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs))
    register_pairs(out / "dataset_info.json", PAIRS_DATASET, "pairs.jsonl")

    sfmed = [str(Path(sys.executable).parent / "sfmed")]
    model = Path(arguments.init).resolve() if arguments.init else work / "model"
    if not arguments.init:
        build_tiny_model(model, TinyModelSpec.random_init())
    config = {
        "output_dir": str(out),
        "rm_yaml": str(ROOT / "examples" / "yaml" / "tiny" / "rm.yaml"),
        "rm_overrides": [f"model_name_or_path={model}", f"num_train_epochs={arguments.epochs}"],
        "num_reward_models": arguments.models,
        "cutoff_len": 256,
        "flip_fraction": arguments.flip,
        "drop_fraction": 0.0,
    }
    (work / "pref.yaml").write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    for step in ("train-rms", "score", "select"):
        subprocess.run([*sfmed, "pref", step, str(work / "pref.yaml")], check=True, cwd=ROOT)
    elapsed = time.perf_counter() - started

    audit = [row for _, row in read_rows(out / "audit.jsonl")]
    ensemble = precision_recall({row["id"] for row in audit if row["action"] == FLIP}, planted)
    chosen = np.array([row["chosen_scores"] for row in audit])
    rejected = np.array([row["rejected_scores"] for row in audit])
    singles = []
    for m in range(chosen.shape[1]):
        mean, _ = strengths(chosen[:, [m]], rejected[:, [m]])
        actions = select_actions(mean, arguments.flip, 0.0)
        singles.append(
            precision_recall({row["id"] for row, a in zip(audit, actions, strict=True) if a == FLIP}, planted)
        )
    result = {
        "source": arguments.source,
        "negatives": arguments.negatives,
        "pairs": len(pairs),
        "planted_flips": len(planted),
        "reward_models": arguments.models,
        "epochs": arguments.epochs,
        "init": arguments.init or "random init (TinyModelSpec.random_init)",
        "ensemble": ensemble,
        "single_models": singles,
        "seconds": round(elapsed, 1),
    }
    results = ROOT / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = f"pref_fidelity_{arguments.source}_{arguments.negatives}"
    (results / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Preference flip fidelity ({arguments.source} answers, {arguments.negatives} negatives, {len(pairs)} pairs, "
        f"{len(planted)} planted flips; reward models from {arguments.init or 'a random-init tiny model'})",
        "",
        "| selector | precision | recall |",
        "|---|---:|---:|",
        f"| ensemble of {arguments.models} (mean strength) | {ensemble['precision']:.3f} | {ensemble['recall']:.3f} |",
        *(f"| model {m} alone | {s['precision']:.3f} | {s['recall']:.3f} |" for m, s in enumerate(singles)),
        "",
        f"Train + score + select: {elapsed:.0f} s on this machine.",
    ]
    (results / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
