"""Calibration of the guard's thresholds (``sfmed privacy build-db``): every check is scored on perturbed
high-risk prompts (perturb.py) and on control prompts the model never saw (controls.py or the user's files), the
output check on the model's own greedy answers to both. Each check's threshold is the lowest at which its
false-refusal rate on the controls stays within ``target_false_refusal_rate / (2 x number of checks)``: the three
together stay within half the target by the union bound, and the other half is left for prompts unlike the
controls (a threshold at the k-th highest of N control scores refuses about (k+1)/(N+1) of unseen ones). A
threshold never goes below a floor under which the overlap no longer means "the same text". The report
(``calibration_report.json``, ``calibration_scores.png``) gives, per check, the threshold, why, its false-refusal
rate and its recall (on the perturbed prompts for the input checks, per class of edit; on the answers that
reproduce a memorized record for the output check).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from sfmed_lf.errors import DataError
from sfmed_lf.formats.conversation import Conversation, Prompt
from sfmed_lf.formats.datasets import dataset_from_file
from sfmed_lf.formats.lf_template import ChatTemplate
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.privacy.config import CHECKS, DatabaseConfig
from sfmed_lf.privacy.controls import control_prompts
from sfmed_lf.privacy.conversation import GuardedConversation
from sfmed_lf.privacy.database import HighRiskDatabase, default_hold_back, fire_position
from sfmed_lf.privacy.generation import greedy_continuations
from sfmed_lf.privacy.perturb import perturbations
from sfmed_lf.privacy.scoring import GuardScorer
from sfmed_lf.text.rouge import rouge_l_f
from sfmed_lf.utils.io import atomic_write_bytes, atomic_write_text
from sfmed_lf.utils.plotting import png_bytes, pyplot

# below these, an overlap no longer means "the same prompt / the same text", whatever the controls say
THRESHOLD_FLOORS = {"embedding": 0.5, "lexical": 0.5, "output": 0.3}
LEAK_ROUGE_L = 0.8  # an answer with Rouge-L F above this against the memorized suffix reproduces it (the audit's)


def control_prompts_from_files(paths: list[str]) -> list[Prompt]:
    """The prompts of any data file LLaMA-Factory reads (alpaca, ShareGPT/OpenAI messages, preference rows): each
    row's question with its history and system prompt; its answer is not used."""
    prompts = []
    for path in paths:
        for location, _, sample in dataset_from_file(path).records():
            if isinstance(sample, Conversation):
                unanswered = sample.metadata.get("unanswered")
                prompts.append(Prompt(unanswered, sample.turns, sample.system) if unanswered else sample.prompt())
            elif isinstance(sample, PreferencePair):
                prompts.append(sample.prompt)
            else:
                raise location.error("pre-training text has no prompt; controls are questions.")
    if not prompts:
        raise DataError(f"controls {paths}: no prompts.")
    return prompts


def choose_threshold(control_scores: list[float], budget: float, floor: float) -> tuple[float, str]:
    """The lowest threshold (refuse at score >= threshold) that refuses at most floor(budget x N) controls."""
    allowed = math.floor(budget * len(control_scores) + 1e-9)
    ranked = sorted(control_scores, reverse=True)
    if allowed >= len(ranked):
        return floor, f"the floor {floor}: the budget allows refusing every control"
    boundary = ranked[allowed]  # the highest control score that must pass
    threshold = math.ceil((boundary + 1e-9) * 1e4) / 1e4
    if threshold <= floor:
        return floor, (
            f"the floor {floor}: the control score ranked {allowed + 1} ({boundary:.4f}) is below it, and below the "
            "floor an overlap does not mean the same text"
        )
    return threshold, (
        f"just above the control score ranked {allowed + 1} of {len(ranked)} ({boundary:.4f}), so that at most "
        f"{allowed} controls ({budget:.2%} budget) are refused"
    )


def leaking_answers(
    answers: list[str], rows: list[int | None], suffixes: list[str], with_identifier: list[bool]
) -> list[bool]:
    """Answers that give a memorized record away: one of its identifiers (``with_identifier``), or the suffix of the
    entry the output check matched it with (``rows``) reproduced at Rouge-L F above LEAK_ROUGE_L. A control prompt
    can draw such an answer from a model that memorized records; refusing it is no false refusal, so calibration
    leaves these out of the controls."""
    return [
        identifier or (row is not None and rouge_l_f(answer, suffixes[row]) > LEAK_ROUGE_L)
        for answer, row, identifier in zip(answers, rows, with_identifier, strict=True)
    ]


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 0.0


def calibrate(
    config: DatabaseConfig, database: HighRiskDatabase, model: Any, tokenizer: Any, audited_queries: set[str]
) -> list[Path]:
    """Fill ``database.thresholds`` (checks not set in the config) and ``hold_back``; write the report."""
    if config.controls:
        control_set, control_source = control_prompts_from_files(config.controls), list(config.controls)
    else:
        control_set = control_prompts(config.num_controls, config.seed, exclude=frozenset(audited_queries))
        control_source = f"generated by sfmed_lf.privacy.controls (seed {config.seed})"
    perturbed = [
        (row, kind, prompt)
        for row, entry in enumerate(database.entries)
        for kind, prompt in perturbations(entry["query"], config.perturbations_per_record, config.seed + row)
    ]
    prompts = {"controls": control_set, "perturbed": [prompt for _, _, prompt in perturbed]}
    controls = [GuardedConversation.from_prompt(prompt) for prompt in prompts["controls"]]
    perturbed_conversations = [GuardedConversation.from_prompt(prompt) for prompt in prompts["perturbed"]]
    scorer = GuardScorer(database, model, tokenizer, config.batch_size)
    print(f"calibration: scoring {len(controls)} controls and {len(perturbed)} perturbed high-risk prompts")
    scores: dict[str, dict[str, list[float]]] = {check: {} for check in CHECKS}
    for name, conversations in (("controls", controls), ("perturbed", perturbed_conversations)):
        scores["embedding"][name] = [score for score, _ in scorer.embedding_scores(conversations)]
        scores["lexical"][name] = [scorer.lexical_score(conversation)[0] for conversation in conversations]

    template = ChatTemplate(tokenizer, config.template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop_ids = template.template.get_stop_token_ids(tokenizer)
    answers: dict[str, list[str]] = {}
    matched_rows: dict[str, list[int | None]] = {}
    for name in ("controls", "perturbed"):
        ids = [template.prompt_ids(prompt) for prompt in prompts[name]]
        print(f"calibration: answering {len(ids)} {name} prompts (greedy, {config.max_new_tokens} new tokens)")
        generated = greedy_continuations(model, ids, pad_id, config.max_new_tokens, stop_ids, config.batch_size)
        answers[name] = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
        scored = [scorer.output_score(answer) for answer in answers[name]]
        scores["output"][name], matched_rows[name] = [score for score, _ in scored], [row for _, row in scored]
    # the output check also refuses an answer holding a protected identifier, whatever its score
    requests = {"controls": controls, "perturbed": perturbed_conversations}
    by_identifier = {
        name: [
            database.identifier_hit(answer, request.whole_text) is not None
            for answer, request in zip(answers[name], requests[name], strict=True)
        ]
        for name in answers
    }
    # the audit's measure: Rouge-L against the suffix cut to as many tokens as the answer may have
    suffixes = [
        tokenizer.decode(tokenizer(entry["suffix"], add_special_tokens=False).input_ids[: config.max_new_tokens])
        for entry in database.entries
    ]
    own_rows: list[int | None] = [row for row, _, _ in perturbed]
    leaking = leaking_answers(answers["perturbed"], own_rows, suffixes, by_identifier["perturbed"])

    control_leaks = leaking_answers(answers["controls"], matched_rows["controls"], suffixes, by_identifier["controls"])
    innocent = {
        "embedding": scores["embedding"]["controls"],
        "lexical": scores["lexical"]["controls"],
        "output": [score for score, leak in zip(scores["output"]["controls"], control_leaks, strict=True) if not leak],
    }

    budget = config.target_false_refusal_rate / (2 * len(CHECKS))
    report_checks: dict[str, Any] = {}
    for check in CHECKS:
        configured = getattr(config, f"{check}_threshold")
        if configured is not None:
            threshold, why = configured, "set in the build-db config"
        else:
            threshold, why = choose_threshold(innocent[check], budget, THRESHOLD_FLOORS[check])
        database.thresholds[check] = threshold
        control_flags = [score >= threshold for score in innocent[check]]
        perturbed_flags = [score >= threshold for score in scores[check]["perturbed"]]
        if check == "output":
            perturbed_flags = [
                flag or by_id for flag, by_id in zip(perturbed_flags, by_identifier["perturbed"], strict=True)
            ]
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for (_, kind, _), flag in zip(perturbed, perturbed_flags, strict=True):
            by_kind[kind].append(flag)
        report_checks[check] = {
            "threshold": threshold,
            "why": why,
            "false_refusal_rate": _rate(control_flags),
            "refused_controls": sum(control_flags),
            "control_max": max(innocent[check], default=None),
            "perturbed_min": min(scores[check]["perturbed"], default=None),
            "floor": THRESHOLD_FLOORS[check],
        }
        if check == "output":
            # a memorized suffix that even reproduced whole stays below the threshold is text many training
            # records share (boilerplate advice), not a record: its reproductions are not leaks the check must stop
            common = [
                row
                for row, entry in enumerate(database.entries)
                if fire_position(database.output, entry["suffix"], row, threshold) is None
            ]
            private_leaks = [
                f
                for f, leak, (row, _, _) in zip(perturbed_flags, leaking, perturbed, strict=True)
                if leak and row not in common
            ]
            report_checks[check]["recall_on_leaks"] = _rate(private_leaks)
            report_checks[check]["leaks_of_private_records"] = len(private_leaks)
            report_checks[check]["fired_on_perturbed"] = _rate(perturbed_flags)
            report_checks[check]["control_answers_leaking"] = sum(control_leaks)
            report_checks[check]["control_answers_with_identifiers"] = sum(by_identifier["controls"])
            report_checks[check]["records_too_common_to_fire"] = {
                database.entries[row]["id"]: round(database.output.distinctiveness[row], 4) for row in common
            }
        else:
            report_checks[check]["recall"] = _rate(perturbed_flags)
            report_checks[check]["recall_by_kind"] = {kind: _rate(flags) for kind, flags in sorted(by_kind.items())}
    database.hold_back = default_hold_back(database)

    def refused(name: str, index: int, checks: tuple[str, ...] = CHECKS) -> bool:
        by_id = "output" in checks and by_identifier[name][index]
        return by_id or any(scores[check][name][index] >= database.thresholds[check] for check in checks)

    input_caught = [refused("perturbed", i, ("embedding", "lexical")) for i in range(len(perturbed))]
    guard_refused_controls = [refused("controls", i) for i in range(len(controls)) if not control_leaks[i]]
    report = {
        "model": database.model["path"],
        "target_false_refusal_rate": config.target_false_refusal_rate,
        "budget_per_check": budget,
        "controls": {"count": len(controls), "source": control_source},
        "perturbed": {
            "count": len(perturbed),
            "per_record": config.perturbations_per_record,
            "records": len(database.entries),
            "kinds": sorted({kind for _, kind, _ in perturbed}),
        },
        "checks": report_checks,
        "guard": {
            "false_refusal_rate": _rate(guard_refused_controls),
            "input_recall": _rate(input_caught),
            "answers_reproducing_a_suffix_without_guard": sum(leaking),
            "leaks_with_guard": sum(leak and not refused("perturbed", i) for i, leak in enumerate(leaking)),
            "hold_back_characters": database.hold_back,
            "hold_back_why": (
                "1.5 x the latest character at which the output check fires on a verbatim memorized suffix, plus "
                "one n-gram: a streamed suffix is caught before any of it leaves the server"
            ),
        },
    }
    out = Path(config.output_dir)
    paths = [out / "calibration_report.json", out / "calibration_scores.png"]
    atomic_write_text(paths[0], json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    common_ids = set(report_checks["output"]["records_too_common_to_fire"])
    answer_kinds = [
        ("boilerplate" if database.entries[row]["id"] in common_ids else "record") if leak else "other"
        for leak, (row, _, _) in zip(leaking, perturbed, strict=True)
    ]
    atomic_write_bytes(paths[1], _plot(scores, report_checks, answer_kinds))
    for check in CHECKS:
        line = report_checks[check]
        recall = line.get("recall", line.get("recall_on_leaks"))
        print(
            f"calibration: {check} threshold {line['threshold']} ({line['why']}); false refusals "
            f"{line['false_refusal_rate']:.2%}, recall {recall:.2%}"
        )
    return paths


def _plot(scores: dict[str, dict[str, list[float]]], report_checks: dict[str, Any], kinds: list[str]) -> bytes:
    """One panel per check: controls against perturbed high-risk prompts (for the output check, the answers to
    them by what they reproduce), the threshold with its false-refusal rate and recall."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {
        "embedding": "input: hidden-state cosine to a high-risk prompt",
        "lexical": "input: weighted n-gram share of a high-risk prompt",
        "output": "answer: weighted n-gram share of a memorized suffix",
    }
    colours = {"record": "#c62828", "boilerplate": "#8e24aa", "other": "#ffb74d", "perturbed": "#c62828"}
    for axis, check in zip(axes, CHECKS, strict=True):
        low = -1.0 if check == "embedding" else 0.0
        bins = [low + (1 - low) * i / 40 for i in range(41)]
        axis.hist(scores[check]["controls"], bins=bins, color="#546e7a", alpha=0.75, label="unseen controls")
        groups: dict[str, list[float]] = defaultdict(list)
        for score, kind in zip(scores[check]["perturbed"], kinds, strict=True):
            groups[kind if check == "output" else "perturbed"].append(score)
        labels = {
            "perturbed": "perturbed high-risk prompts",
            "record": "answers reproducing a record",
            "boilerplate": "answers reproducing boilerplate",
            "other": "other answers to perturbed prompts",
        }
        for group, values in sorted(groups.items()):
            axis.hist(values, bins=bins, color=colours[group], alpha=0.7, label=labels[group])
        line = report_checks[check]
        recall = line.get("recall", line.get("recall_on_leaks", 0.0))
        axis.axvline(
            line["threshold"],
            color="black",
            linestyle="--",
            label=f"threshold {line['threshold']:g}: refuses {line['false_refusal_rate']:.2%} of controls, "
            f"recall {recall:.0%}",
        )
        axis.set_yscale("log")
        axis.set_title(titles[check], fontsize=9)
        axis.set_xlabel("score")
        axis.legend(fontsize=6.5, loc="upper center")
    axes[0].set_ylabel("count (log scale)")
    return png_bytes(figure)
