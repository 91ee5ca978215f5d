"""Instruction diversification (Fig. 2) against real OpenAI-compatible servers on localhost: a scripted generator
with known answers (exact acceptance counts, bank rotation, resume after a failure), `llamafactory-cli api` serving
the tiny model; then `sfmed data attach-system` and LLaMA-Factory loading the result."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import yaml

from sfmed_lf.data_prep.diversify import Banks, InstructionCheck, Lexicon, split_candidates
from sfmed_lf.tiny_model import TinyModelSpec, build_tiny_model
from tests.helpers import REPO_ROOT, lf_load_dataset, read_json, run
from tests.servers import ScriptedChatServer, llamafactory_api

SEEDS = REPO_ROOT / "data" / "sfmed_seed_instructions_single.jsonl"
ALPHABET = "甲乙丙丁戊己庚辛壬癸子丑寅卯辰巳午未申酉戌亥春夏秋冬东南西北金木水火土天地玄黄宇宙洪荒日月盈昃"


def scripted_reply(payload: dict) -> tuple[int, str]:
    """Seven lines per request, a function of its messages: two acceptable instructions, then one each of a
    near-repeat, an unfinished sentence, a non-medical sentence, a preamble too short to be an instruction and a
    statement of facts that does not address the model."""
    prompt = json.dumps(payload["messages"], ensure_ascii=False)
    rng = random.Random(hashlib.sha256(prompt.encode()).hexdigest())
    first, second = ("".join(rng.choices(ALPHABET, k=30)) for _ in range(2))
    return 200, "\n".join(
        [
            "以下是新指令：",
            f"1. 你是心内科医生，{first}。",
            f"2、你是儿科医生，{second}。",
            f"3. 你是心内科医生，{first}！",
            f"（4）你是一名医生，请回答患者关于{second[:5]}的问题，并且",
            f"- 请写一首关于{second[:8]}的诗，要求语言优美动人。",
            f"肺脓肿的一线治疗药物是克林霉素，需要做胸部CT和痰培养，{second[:6]}。",
        ]
    )


def diversify_config(tmp_path: Path, url: str, output: str, **extra) -> Path:
    config = {
        "seeds": str(SEEDS),
        "output_dir": str(tmp_path / output),
        "generator_url": url,
        "generator_model": "glm-4-9b-chat",
        "rounds": 6,
        "history_pairs": 2,
        "keep_oldest": 3,
        "keep_newest": 4,
        "swap_every": 2,
        "max_retries": 0,
        **extra,
    }
    path = tmp_path / f"{output}.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_split_and_checks():
    assert split_candidates("1. 甲。\n2、乙。\n（3）丙。\n- 丁。\n第五条：戊。\n“己。”") == [
        "甲。",
        "乙。",
        "丙。",
        "丁。",
        "戊。",
        "己。",
    ]
    assert split_candidates("1. 第一条指令。2. 第二条指令。") == ["第一条指令。", "第二条指令。"]
    check = InstructionCheck(Lexicon(None), min_terms=2, min_chars=10, max_chars=60, max_similarity=0.6)
    check.remember("你是一名心内科医生，请直接解答患者关于高血压的问题。")
    assert check.rejection("你是医生。") == "too_short"
    assert check.rejection("你是一名儿科医生，请直接回答家长关于发\ufffd热的问题。") == "undecodable_characters"
    assert check.rejection("你是一名儿科医生，请直接回答家长关于发热的问题" + "，" * 60) == "too_long"
    assert check.rejection("你是一名儿科医生，请直接回答家长关于发热（体温的问题。") == "incomplete"
    assert check.rejection("你是一名儿科医生，请直接回答家长关于发热的问题，并且") == "incomplete"
    assert check.rejection("你是一位诗人，请写一首关于春天的诗。") == "too_few_medical_terms"
    # what is not an instruction to the model: a fact statement, a small model's word salad
    for statement in (
        "肺脓肿的一线治疗药物是克林霉素，需要做胸部CT和痰培养。",
        "太原时和咳嗽胸痛是北京市，治疗药物是药物禁用于发热腹泻。",
    ):
        assert check.rejection(statement) == "not_addressed_to_the_model", statement
    for addressed in (
        "扮演一位资深的心内科医生，直接解答患者关于高血压用药的疑问。",
        "身为儿科主治医师，面对家长关于孩子发热咳嗽的咨询，给出检查和用药建议。",
        "在回答患者关于糖尿病的问题时，请说明需要做的检查和首选药物。",
        "您现在是一名呼吸内科医生，负责解答患者关于哮喘的问题并给出用药建议。",
    ):
        assert check.rejection(addressed) is None, addressed
    assert check.rejection("你是一名心内科医生，请直接解答患者关于高血压的疑问。") == "repeats_known_instruction"
    assert check.rejection("你是一名儿科医生，请直接回答家长关于孩子发热和咳嗽的问题。") is None
    assert Lexicon(None).terms_in("心内科医生") == {"心内科", "医生"}  # longest match, no nested 内科


def test_banks_alternate_trim_and_swap():
    banks = Banks.from_seeds([f"s{i}" for i in range(6)], seed=3)
    question, answer = list(banks.question), list(banks.answer)
    assert sorted(question + answer) == [f"s{i}" for i in range(6)] and len(question) == len(answer) == 3
    banks.add(["n1", "n2", "n3", "n4", "n5"], keep_oldest=2, keep_newest=2)
    assert banks.question == [question[0], question[1], "n3", "n5"]  # n1, n3, n5 arrived; oldest 2 + newest 2
    assert banks.answer == [answer[0], answer[1], "n2", "n4"]
    banks.swap()
    assert banks.question[-1] == "n4"


def test_diversify_with_scripted_generator_counts_rotates_and_resumes(tmp_path):
    with ScriptedChatServer(scripted_reply) as server:
        run(["sfmed", "data", "diversify", str(diversify_config(tmp_path, server.base_url, "whole"))])
        requests = list(server.requests)
    report = read_json(tmp_path / "whole" / "diversify_report.json")
    assert report["candidates"] == 6 * 7 and report["accepted"] == 6 * 2
    assert report["rejected_by_reason"] == {
        "too_short": 6,
        "repeats_known_instruction": 6,
        "incomplete": 6,
        "too_few_medical_terms": 6,
        "not_addressed_to_the_model": 6,
    }
    seeds = [row["instruction"] for row in lines(SEEDS)]
    pool = lines(tmp_path / "whole" / "instructions.jsonl")
    assert [row["instruction"] for row in pool[: len(seeds)]] == seeds and len(pool) == len(seeds) + 12
    assert report["bank_sizes"] == {"question": 7, "answer": 7}  # 7 seeds each + 6 new each, trimmed to 3 + 4

    # the prompts: system, 2 history turns (question bank as user, answer bank as assistant), the expanded query
    question_bank = Banks.from_seeds(seeds, seed=1).question
    rounds = lines(tmp_path / "whole" / "rounds.jsonl")
    for number, (request, record) in enumerate(zip(requests, rounds, strict=True), start=1):
        roles = [message["role"] for message in request["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert "不要向患者追问" in request["messages"][0]["content"]
        assert request["messages"][-1]["content"].startswith(record["query"])
        known_before = seeds + [text for earlier in rounds[: number - 1] for text in earlier["accepted"]]
        assert all(text in known_before for pair in record["history"] for text in pair)
        if number <= 2:  # before the first swap the query comes from the seed question bank
            assert record["query"] in question_bank
    after_swap = rounds[2]["query"]  # round 3 draws from the former answer bank: seeds or even-index additions
    assert after_swap not in question_bank

    # a generator failing at round 4 stops the run with the endpoint named; the re-run asks only what is missing
    calls = []

    def failing(payload: dict) -> tuple[int, str]:
        calls.append(payload)
        return (400, "bad request") if len(calls) == 4 else scripted_reply(payload)

    with ScriptedChatServer(failing) as server:
        config = diversify_config(tmp_path, server.base_url, "resumed")
        result = run(["sfmed", "data", "diversify", str(config)], check=False)
        assert result.returncode == 2 and f"{server.base_url}/chat/completions" in result.stderr
        assert len(lines(tmp_path / "resumed" / "rounds.jsonl")) == 3
    with ScriptedChatServer(scripted_reply) as server:
        run(["sfmed", "data", "diversify", str(diversify_config(tmp_path, server.base_url, "resumed"))])
        assert len(server.requests) == 3
    assert (tmp_path / "resumed" / "instructions.jsonl").read_bytes() == (
        tmp_path / "whole" / "instructions.jsonl"
    ).read_bytes()
    assert [r["round"] for r in lines(tmp_path / "resumed" / "rounds.jsonl")] == [1, 2, 3, 4, 5, 6]

    changed = run(
        ["sfmed", "data", "diversify", str(diversify_config(tmp_path, server.base_url, "resumed", seed=2))],
        check=False,
    )
    assert changed.returncode == 2 and "changed: seed" in changed.stderr
    markers = diversify_config(tmp_path, server.base_url, "resumed", address_markers=["你", "请"])
    changed = run(["sfmed", "data", "diversify", str(markers)], check=False)
    assert changed.returncode == 2 and "changed: address_markers" in changed.stderr

    # without the check the statement of facts is accepted, once (the later ones repeat it)
    with ScriptedChatServer(scripted_reply) as server:
        run(["sfmed", "data", "diversify", str(diversify_config(tmp_path, server.base_url, "off", address_markers=[]))])
    unchecked = read_json(tmp_path / "off" / "diversify_report.json")
    assert unchecked["accepted"] == 6 * 2 + 1 and "not_addressed_to_the_model" not in unchecked["rejected_by_reason"]
    empty = run(
        ["sfmed", "data", "diversify", str(diversify_config(tmp_path, "http://x", "e", address_markers=[""]))],
        check=False,
    )
    assert empty.returncode == 2 and "an empty marker matches every text" in empty.stderr


def test_diversify_against_llamafactory_api_with_the_tiny_model(tmp_path):
    model = build_tiny_model(tmp_path / "model", TinyModelSpec.random_init())
    with llamafactory_api(model, tmp_path / "api.log") as base_url:
        config = diversify_config(tmp_path, base_url, "lf", rounds=2, max_new_tokens=48, pool="multi")
        run(["sfmed", "data", "diversify", str(config)])
    report = read_json(tmp_path / "lf" / "diversify_report.json")
    rounds = lines(tmp_path / "lf" / "rounds.jsonl")
    assert report["rounds"] == 2 and len(rounds) == 2 and all(r["reply"] for r in rounds)
    assert report["candidates"] == sum(len(split_candidates(r["reply"])) for r in rounds)
    assert report["accepted"] + sum(report["rejected_by_reason"].values()) == report["candidates"]


def test_attach_system_prompts_by_turns_and_load_in_llamafactory(tmp_path):
    seed_files = {pool: REPO_ROOT / "data" / f"sfmed_seed_instructions_{pool}.jsonl" for pool in ("single", "multi")}
    pools = {pool: [row["instruction"] for row in lines(path)] for pool, path in seed_files.items()}
    config = {
        "datasets": ["sfmed_sample_sft_single", "sfmed_sample_sft_multiturn"],
        "single_pool": str(seed_files["single"]),
        "multi_pool": str(seed_files["multi"]),
        "output_dir": str(tmp_path / "attached"),
    }
    (tmp_path / "attach.yaml").write_text(yaml.safe_dump(config))
    run(["sfmed", "data", "attach-system", str(tmp_path / "attach.yaml")])
    first = (tmp_path / "attached" / "sfmed_sample_sft_multiturn_diversified.jsonl").read_bytes()
    run(["sfmed", "data", "attach-system", str(tmp_path / "attach.yaml")])
    assert (tmp_path / "attached" / "sfmed_sample_sft_multiturn_diversified.jsonl").read_bytes() == first

    single = lines(tmp_path / "attached" / "sfmed_sample_sft_single_diversified.jsonl")
    multi = lines(tmp_path / "attached" / "sfmed_sample_sft_multiturn_diversified.jsonl")
    assert all(row["system"] in pools["single"] for row in single)
    for row in multi:
        turns = sum(1 for message in row["conversations"] if message["from"] == "human")
        assert row["system"] in pools["multi" if turns > 1 else "single"]
    report = read_json(tmp_path / "attached" / "attach_report.json")
    assert report["datasets"]["sfmed_sample_sft_single"] == {"single": len(single), "multi": 0, "kept_existing": 0}
    assert len({row["system"] for row in single}) > 5, "instructions vary across rows"

    model = build_tiny_model(tmp_path / "model", TinyModelSpec.random_init())
    info = json.loads((tmp_path / "attached" / "dataset_info.json").read_text())
    for name, rows in (
        ("sfmed_sample_sft_single_diversified", single),
        ("sfmed_sample_sft_multiturn_diversified", multi),
    ):
        info_abs = {name: {**info[name], "file_name": str(tmp_path / "attached" / info[name]["file_name"])}}
        dataset, tokenizer = lf_load_dataset(model, info_abs, name, "sft", tmp_path)
        assert len(dataset) == len(rows)
        assert rows[0]["system"] in tokenizer.decode(dataset[0]["input_ids"])


def test_attach_reads_dedup_output_and_keeps_existing_prompts(tmp_path):
    """dataset_dir: the output of `sfmed data dedup` (it registers the kept files under the same names);
    keep_existing: rows with a system prompt keep it."""
    bundled = ["datasets=[sfmed_sample_sft_single, sfmed_sample_sft_multiturn]", "dataset_dir=."]
    run(["sfmed", "data", "dedup", "examples/yaml/tiny/dedup.yaml", *bundled, f"output_dir={tmp_path / 'dedup'}"])
    kept = json.loads((tmp_path / "dedup" / "sfmed_sft_multiturn.json").read_text(encoding="utf-8"))
    config = {
        "datasets": ["sfmed_sample_sft_multiturn"],
        "dataset_dir": str(tmp_path / "dedup"),
        "single_pool": str(SEEDS),
        "multi_pool": str(REPO_ROOT / "data" / "sfmed_seed_instructions_multi.jsonl"),
        "output_dir": str(tmp_path / "attached"),
        "keep_existing": True,
    }
    (tmp_path / "attach.yaml").write_text(yaml.safe_dump(config))
    run(["sfmed", "data", "attach-system", str(tmp_path / "attach.yaml")])
    rows = lines(tmp_path / "attached" / "sfmed_sample_sft_multiturn_diversified.jsonl")
    assert [row["conversations"] for row in rows] == [row["conversations"] for row in kept]
    with_system = sum(1 for row in kept if row.get("system"))
    report = read_json(tmp_path / "attached" / "attach_report.json")["datasets"]["sfmed_sample_sft_multiturn"]
    assert with_system > 0 and report["kept_existing"] == with_system
    for original, written in zip(kept, rows, strict=True):
        if original.get("system"):
            assert written["system"] == original["system"]
