"""The generated world (sfmed world generate), its knowledge-base judge and the character tokenizer: fast checks that
need no training. What training on the world achieves is in test_world_effects.py."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from sfmed_lf.cli import main as sfmed_main
from sfmed_lf.errors import DataError
from sfmed_lf.eval.judge import judge_messages, parse_score
from sfmed_lf.eval.mcq import extract_choice, is_correct
from sfmed_lf.formats.conversation import Prompt
from sfmed_lf.preference.judge import judge_prompt, parse_verdict
from sfmed_lf.serving.chat_client import ChatEndpoint
from sfmed_lf.templates import MULTI_TURN_INSTRUCTION
from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model
from sfmed_lf.world import phrasing
from sfmed_lf.world.generate import WorldConfig, generate_world
from sfmed_lf.world.judge import JUDGE_MODELS, KnowledgeJudge, world_judge_server
from sfmed_lf.world.knowledge import load_conditions, parse_conditions
from tests.helpers import REPO_ROOT, lf_load_dataset, read_json
from tests.servers import ScriptedChatServer


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "world"
    generate_world(WorldConfig(output_dir=str(out)))
    return out


def rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return (
        [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".jsonl"
        else json.loads(text)
    )


def digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_the_bundled_knowledge_base_is_large_enough_and_consistent():
    conditions = load_conditions()
    assert len(conditions) >= 200
    assert len({c.name for c in conditions}) == len(conditions)
    assert len({frozenset(c.symptoms) for c in conditions}) == len(conditions), "symptom sets identify conditions"
    assert len({c.wording for c in conditions}) == len(conditions)
    for condition in conditions:
        assert condition.name not in condition.wording, f"{condition.name}: the patient's wording names the diagnosis"


def test_generation_is_deterministic_and_seeded(world, tmp_path):
    again = tmp_path / "again"
    assert sfmed_main(["world", "generate", f"output_dir={again}"]) == 0
    assert digest(again) == digest(world)
    other = tmp_path / "other"
    generate_world(WorldConfig(output_dir=str(other), seed=1))
    assert digest(other)["sft_single.json"] != digest(world)["sft_single.json"]


def test_splits_keep_evaluated_exam_items_out_of_training(world):
    kb = read_json(world / "kb.json")
    splits = kb["splits"]
    assert sum(len(names) for names in splits.values()) == len(kb["conditions"]) >= 200
    sft = rows(world / "sft_single.json") + rows(world / "sft_multiturn.json")
    about = Counter((row["metadata"].get("condition"), row["metadata"]["kind"].split(":")[0]) for row in sft)
    exam_conditions = {condition for condition, kind in about if kind == "exam" and condition is not None}
    assert all(
        kind != "exam" or (condition is None) == (kind_full == "exam:general")
        for (condition, kind), kind_full in (
            ((row["metadata"].get("condition"), row["metadata"]["kind"].split(":")[0]), row["metadata"]["kind"])
            for row in sft
        )
    ), "only the general-domain exam items are about no condition"
    consulted = {condition for condition, kind in about if kind == "consultation"}
    assert exam_conditions == set(splits["exam"])
    assert consulted == set(splits["exam"]) | set(splits["dialogue"])
    conditions = {c["name"]: c for c in kb["conditions"]}
    sft_text = json.dumps(sft, ensure_ascii=False)
    for name in splits["held_out"]:  # met only in pre-training text: no row states a fact about them
        assert conditions[name]["wording"] not in sft_text
        assert f"{name}的一线治疗药物" not in sft_text and f"考虑是{name}。" not in sft_text
    train_phrasings = {p for kind in phrasing.EXAM_KINDS.values() for p in kind[1]}
    eval_phrasings = {p for kind in phrasing.EXAM_KINDS.values() for p in kind[2]}
    assert not train_phrasings & eval_phrasings
    trained_questions = {row["instruction"] for row in sft if "instruction" in row}
    items = rows(world / "eval_mcq.jsonl")
    assert {item["dataset"] for item in items} == {"world-exam (dialogues)", "world-exam (pre-training only)"}
    assert any(item["multi_answer"] for item in items) and not all(item["multi_answer"] for item in items)
    for item in items:
        condition = item["id"].split("-", 1)[1].rsplit("-", 1)[0]
        assert condition in set(splits["dialogue"]) | set(splits["held_out"]), f"{condition} had SFT exam items"
        assert not any(item["question"] in question for question in trained_questions)
        # the reference answer states the knowledge base's fact, and its letters are the gold ones
        assert is_correct(extract_choice(item["explanation"], item["options"]), item["answer"], item["multi_answer"])


def test_pretraining_text_states_every_fact_in_several_phrasings(world):
    texts = [row["text"] for row in rows(world / "pt_medical.jsonl")]
    for condition in load_conditions()[:40]:
        phrasings_seen = {
            template
            for template in phrasing.FACT_SENTENCES["drug"]
            if any(phrasing.fill(template, condition) in text for text in texts)
        }
        assert len(phrasings_seen) >= 2, condition.name


def test_sft_data_has_the_documented_imperfections(world):
    single = [r for r in rows(world / "sft_single.json") if not r["instruction"].startswith("以下是一道")]
    consultations = [r for r in single if not r["output"].startswith("患者")]
    follow_ups = sum("？" in r["output"] for r in consultations)
    cautions = sum(bool(re.search("禁用", r["output"])) for r in consultations)
    assert (
        0.08 < follow_ups / len(consultations) < 0.3
    )  # follow_up_noise_share 0.2 of the patients outside the population
    assert 0.3 < cautions / len(consultations) < 0.8
    assert not any(r["system"] for r in single)  # the template's default: SINGLE_TURN_INSTRUCTION
    assert all(r["system"] == MULTI_TURN_INSTRUCTION for r in rows(world / "sft_multiturn.json"))


def test_datasets_load_through_llamafactory(world, tmp_path):
    model = build_tiny_model(tmp_path / "model", TinyModelSpec(corpus=(str(world),)))
    info = read_json(world / "dataset_info.json")
    absolute = {name: {**entry, "file_name": str(world / entry["file_name"])} for name, entry in info.items()}
    expected = {
        "world_pt_medical": len(rows(world / "pt_medical.jsonl")),
        "world_sft_single": len(rows(world / "sft_single.json")),
        "world_sft_multiturn": len(rows(world / "sft_multiturn.json")),
        "world_pref_heldout": len(rows(world / "pref_heldout.json")),
    }
    for name, count in expected.items():
        stage = {"world_pt_medical": "pt", "world_pref_heldout": "rm"}.get(name, "sft")
        dataset, tokenizer = lf_load_dataset(model, absolute, name, stage, tmp_path, cutoff_len=1024)
        if stage != "pt":
            assert len(dataset) == count, name
    # the character tokenizer: every Han character of the world is one token, nothing falls back to bytes
    text = rows(world / "sft_single.json")[0]["output"]
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == len(text)
    assert tokenizer.decode(tokenizer("猫狗ü😀", add_special_tokens=False)["input_ids"]) == "猫狗ü😀"  # bytes do


def test_the_judge_prefers_the_correct_answer_of_every_pair_in_both_formats(world):
    judge = KnowledgeJudge.from_world(world)
    pairs = rows(world / "pref_heldout.json") + [
        {**p, "chosen": p["output"], "rejected": next(c for c in p["candidates"] if c != p["output"])}
        for p in rows(world / "pref_prompts.json")
    ]
    assert Counter(p["metadata"]["error"] for p in rows(world / "pref_heldout.json")).keys() == {
        "wrong_drug",
        "missed_contraindication",
        "follow_up_in_single_turn",
        "repeated_follow_up",
    }
    for pair in pairs:
        prompt = Prompt(pair["instruction"], tuple(tuple(turn) for turn in pair["history"]))
        for model in JUDGE_MODELS:
            first = parse_verdict(judge.reply(judge_prompt(prompt, pair["chosen"], pair["rejected"]), model))
            swapped = parse_verdict(judge.reply(judge_prompt(prompt, pair["rejected"], pair["chosen"]), model))
            assert (first, swapped) == ("A", "B"), (model, pair["metadata"], pair["instruction"])
        scored = {}
        for label in ("chosen", "rejected"):
            messages = judge_messages(prompt, pair["chosen"], pair[label])
            scored[label], _ = parse_score(judge.reply(messages[-1]["content"], "kb-facts"))
        assert scored["chosen"] > scored["rejected"], pair


def test_judge_scores_the_checks_it_documents(world):
    judge = KnowledgeJudge.from_world(world)
    kb = judge.kb
    condition = kb.by_name[kb.held_out[0]]
    other = next(c for c in kb.conditions if c.drug not in (condition.drug, condition.alternative))
    question = f"医生您好，{condition.wording}，这是怎么回事？"

    def score(answer: str, history: list[list[str]] | None = None, reference: str = "") -> float | None:
        prompt = Prompt(question, tuple(tuple(turn) for turn in history or []))
        messages = judge_messages(prompt, reference or f"考虑是{condition.name}。", answer)
        return parse_score(judge.reply(messages[-1]["content"], "kb-facts"))[0]

    right = f"考虑是{condition.name}。建议到{condition.department}就诊。治疗首选{condition.drug}。"
    assert (
        score(right) > score(right.replace(condition.drug, other.drug)) > 1
        or score(right.replace(condition.drug, other.drug)) == 1
    )
    assert score(right + f"{condition.contraindicated}禁用{condition.drug}。") > score(right)
    assert score(f"请问您有没有{condition.symptoms[1]}？") <= 2  # a follow-up question in single-turn mode
    asked = [[question, f"请问您有没有{condition.symptoms[1]}？"]]
    multi_reference = f"请问您有没有{condition.symptoms[2]}？"
    targeted = score(f"那有没有{condition.symptoms[2]}呢？", asked, multi_reference)
    repeated = score(f"请问您有没有{condition.symptoms[1]}？", asked, multi_reference)
    assert targeted is not None and repeated is not None and targeted > repeated
    # a prompt about nothing the knowledge base knows gets no score (counted unparseable), never a guess
    messages = judge_messages(Prompt("今天天气怎么样？"), "晴。", "晴天。")
    assert parse_score(judge.reply(messages[-1]["content"], "kb-facts"))[0] is None


def test_judge_server_answers_over_http(world):
    pair = rows(world / "pref_heldout.json")[0]
    prompt = Prompt(pair["instruction"], tuple(tuple(turn) for turn in pair["history"]))
    with world_judge_server(world) as server:
        for model in JUDGE_MODELS:
            endpoint = ChatEndpoint(server.base_url, model)
            reply = endpoint.complete(
                [{"role": "user", "content": judge_prompt(prompt, pair["rejected"], pair["chosen"])}]
            )
            endpoint.close()
            assert parse_verdict(reply) == "B"
        refused = ChatEndpoint(server.base_url, "gpt-4", max_retries=0)
        with pytest.raises(Exception, match="unknown model"):
            refused.complete([{"role": "user", "content": "hi"}])
        refused.close()


def test_bad_condition_tables_name_line_and_field(tmp_path):
    good = "普通感冒|呼吸内科|鼻塞、流涕、咽痛|血常规、咽拭子|对乙酰氨基酚|肝病患者|布洛芬|鼻子不通气"
    assert parse_conditions(f"# comment\n{good}\n", "t.txt")[0].drug == "对乙酰氨基酚"
    for broken, message in (
        (good.replace("|布洛芬", ""), "line 2: expected 8 fields"),
        (good.replace("鼻塞、", ""), "line 2: field 'symptoms'"),
        (good.replace("呼吸内科", " "), "line 2: field 'department' is empty"),
        (good.replace("布洛芬", "对乙酰氨基酚"), "line 2: field 'alternative'"),
        (f"{good}\n{good}", "line 3: field 'name'"),
    ):
        with pytest.raises(DataError, match=re.escape(message)):
            parse_conditions(f"# comment\n{broken}\n", "t.txt")
    table = tmp_path / "conditions.txt"
    table.write_text(good.replace("|布洛芬", ""), encoding="utf-8")
    assert sfmed_main(["world", "generate", f"output_dir={tmp_path / 'w'}", f"conditions={table}"]) == 2
    assert sfmed_main(["world", "generate", f"output_dir={tmp_path / 'w'}", "held_out_fraction=1.5"]) == 2


def test_a_prompt_index_naming_no_condition_is_refused_when_the_judge_loads(world, tmp_path):
    kb = json.loads((world / "kb.json").read_text(encoding="utf-8"))
    key = next(iter(kb["prompts"]))
    for entry, message in (
        ({**kb["prompts"][key], "condition": "不存在的病"}, "field 'condition'"),
        ({**kb["prompts"][key], "mode": "both"}, "field 'mode': 'both'"),
        ("普通感冒", "field 'condition'"),
    ):
        (tmp_path / "kb.json").write_text(json.dumps({**kb, "prompts": {key: entry}}), encoding="utf-8")
        with pytest.raises(DataError, match=re.escape(f"kb.json: prompts[{key!r}]: {message}")):
            KnowledgeJudge.from_world(tmp_path)


def test_char_and_random_init_tokenizers(tmp_path):
    random_init = TinyModelSpec.random_init()
    assert (random_init.tokenizer, random_init.hidden_size, random_init.num_hidden_layers) == ("bpe", 64, 2)
    with pytest.raises(ValueError, match="tokenizer"):
        TinyModelSpec(tokenizer="wordpiece")
    with pytest.raises(DataError, match="no such file"):
        build_tiny_model(tmp_path / "m", TinyModelSpec(corpus=(str(tmp_path / "missing"),)))


def test_exam_diagnosis_counts_where_a_generative_answer_goes_wrong(world):
    """scripts/exam_diagnosis.py on three answers to held-out items: the reference (right in every way), the reference
    with another letter (names the condition and states the fact, letter disagrees), and another option stated with
    its own letter for another condition (wrong, but its letter agrees with what it states)."""
    import runpy

    from sfmed_lf.formats.items import load_items
    from sfmed_lf.world.phrasing import EXAM_ANSWER_MARK

    diagnose = runpy.run_path(str(REPO_ROOT / "scripts" / "exam_diagnosis.py"))["diagnose"]
    items = [
        item
        for item in load_items(world / "eval_mcq.jsonl")
        if not item.exam.multi_answer and item.metadata["kind"] in ("exam:drug", "exam:department")
    ][:3]
    assert len(items) == 3
    reference, other_letter, other_condition = (item.exam.explanation for item in items)
    wrong = next(letter for letter in items[1].exam.options if letter != items[1].exam.answer)
    other_letter = other_letter.split(EXAM_ANSWER_MARK)[0] + EXAM_ANSWER_MARK + wrong
    decoy = next(letter for letter in items[2].exam.options if letter != items[2].exam.answer)
    other_condition = f"某病的首选是{items[2].exam.options[decoy]}。{EXAM_ANSWER_MARK}{decoy}"
    answers = dict(zip((item.id for item in items), (reference, other_letter, other_condition), strict=True))
    counts = [diagnose([item], answers) for item in items]
    values = [next(iter(count.values())) for count in counts]
    assert [list(v.values()) for v in values] == [[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [1, 0, 0, 0, 1]], values


def test_ask_records_counts_any_patients_identifier_in_both_ways_of_asking(world, tmp_path):
    """A scripted server that answers every planted patient's request or prefix with that patient's record, and
    every control patient's with the first planted patient's record: the count is of answers holding any invented
    patient's ID or phone number, not only the asked one's; prefixes go alone, requests with the system prompt."""
    from sfmed_lf.world.records import identifiers, record_prefix

    planted = [row["text"] for row in rows(world / "privacy_planted_text.jsonl")]
    requests = {row["instruction"]: row["output"] for row in rows(world / "privacy_planted.json")}

    def reply(payload: dict) -> tuple[int, str]:
        sent = payload["messages"][-1]["content"]
        for text in planted:
            if sent == record_prefix(text):
                return 200, text[len(sent) :]
        if sent in requests:
            return 200, requests[sent]
        return 200, "我不清楚。" + planted[0]

    for ask in ("prefixes", "requests"):
        with ScriptedChatServer(reply) as server:
            output = tmp_path / f"{ask}.json"
            sfmed_main(["world", "ask-records", str(world), server.base_url, str(output), "--ask", ask])
            sent = [payload["messages"] for payload in server.requests]
        result = read_json(output)
        assert result["asked_with"] == ask
        assert result["summary"]["planted"] == {"asked": len(planted), "answers_with_identifiers": len(planted)}
        control = result["summary"]["control"]
        assert control["answers_with_identifiers"] == control["asked"] > 0
        assert all(a["leaked_groups"] == ["planted"] for a in result["answers"] if a["group"] == "control")
        assert all(
            set(identifiers(planted[0])) <= set(a["leaked"]) for a in result["answers"] if a["group"] == "control"
        )
        roles = {tuple(message["role"] for message in messages) for messages in sent}
        assert roles == ({("user",)} if ask == "prefixes" else {("system", "user")})
    assert record_prefix(planted[0]).startswith("病历记录：患者") and record_prefix(planted[0]).endswith("，")
    bad = ["world", "ask-records", str(world), "http://127.0.0.1:9/v1", str(tmp_path / "x.json"), "--ask", "chat"]
    assert sfmed_main(bad) != 0 and not (tmp_path / "x.json").exists()


def test_every_single_answer_exam_item_has_one_candidate_statement_per_option(world):
    """The likelihood exam (sfmed world measure exam_items) scores one statement per option, built from the item's
    reference: the gold one is the reference's statement of the fact, the others differ in the option text only."""
    from sfmed_lf.formats.items import load_items
    from sfmed_lf.world.generate import HELD_OUT_EXAM
    from sfmed_lf.world.measure import exam_candidates, letter_candidates

    items = load_items(world / "eval_mcq.jsonl")
    single = [item for item in items if not item.exam.multi_answer]
    assert sum(item.dataset == HELD_OUT_EXAM for item in single) >= 80
    for item in single:
        candidates = exam_candidates(item)
        assert candidates is not None, item.id
        letters = list(item.exam.options)
        assert len(candidates) == len(letters) and len(set(candidates)) == len(candidates)
        assert item.exam.explanation == f"{candidates[letters.index(item.exam.answer)]}答案：{item.exam.answer}"
        for letter, candidate in zip(letters, candidates, strict=True):
            assert item.exam.options[letter] in candidate and "答案" not in candidate
        # the answer-letter measure: the right statement, then each letter; the gold one is the reference itself
        answers = letter_candidates(item)
        assert answers == [f"{candidates[letters.index(item.exam.answer)]}答案：{letter}" for letter in letters]
        assert answers[letters.index(item.exam.answer)] == item.exam.explanation
    assert all(exam_candidates(item) is None for item in items if item.exam.multi_answer)
    assert all(letter_candidates(item) is None for item in items if item.exam.multi_answer)
