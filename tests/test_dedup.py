"""MinHash-LSH near-duplicate removal: signatures against their definition and against exact Jaccard, quality on
edited copies of real records, and `sfmed data dedup` end to end (within, then across datasets; resumable)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sfmed_lf.data_prep.lsh import band_parameters, duplicate_clusters
from sfmed_lf.data_prep.minhash import MinHasher, normalize
from sfmed_lf.data_prep.perturb import EDITS, near_duplicate
from tests.helpers import REALDATA, read_json, run

needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")
GENERAL = "高血压患者应当低盐饮食，规律服药，定期监测血压。糖尿病患者要控制饮食，适量运动，按时复查血糖。"


def reference_signature(hasher: MinHasher, text: str) -> np.ndarray:
    """The signature by its definition, one text and one shingle at a time in Python integers."""
    codes = [ord(c) for c in normalize(text)]
    width = min(hasher.ngram, len(codes))
    shingles = []
    for start in range(max(len(codes) - width + 1, 1)):
        value = width
        for code in codes[start : start + width]:
            value = (value * 0x100000001B3 + code) % 2**64
        shingles.append(value if width else 0)
    return np.array(
        [
            min(((int(a) * s + int(b)) % 2**64) >> 32 for s in shingles)
            for a, b in zip(hasher.a[:, 0], hasher.b[:, 0], strict=True)
        ],
        dtype=np.uint32,
    )


def test_batched_signatures_equal_their_definition():
    texts = ["", "短", "两字", GENERAL, GENERAL[::-1], "Ａｓｐｉｒｉｎ，每日一次！", "aspirin每日一次"]
    hasher = MinHasher(num_perm=32, ngram=3, seed=7)
    signatures = hasher.signatures(texts, block=16)  # tiny blocks: many groups, groups of one long text
    for text, signature in zip(texts, signatures, strict=True):
        assert (signature == reference_signature(hasher, text)).all(), text
    assert (signatures[5] == signatures[6]).all(), "full-width letters, case and punctuation are normalised away"


def test_signature_agreement_estimates_jaccard():
    generator = random.Random(0)
    hasher = MinHasher(num_perm=256, ngram=3)
    errors = []
    for _ in range(40):
        first = "".join(generator.choice("甲乙丙丁戊己庚辛壬癸子丑") for _ in range(120))
        second = near_duplicate(first, generator.choice(["insert", "delete"]), generator)
        a, b = ({t[i : i + 3] for i in range(len(t) - 2)} for t in (first, second))
        exact = len(a & b) / len(a | b)
        estimate = np.mean(hasher.signatures([first])[0] == hasher.signatures([second])[0])
        errors.append(abs(estimate - exact))
    assert np.mean(errors) < 0.03 and max(errors) < 0.1


def test_band_parameters_fit_the_signature():
    for threshold in (0.5, 0.7, 0.9):
        bands, rows = band_parameters(threshold, 128)
        assert bands * rows <= 128
        assert abs((1 / bands) ** (1 / rows) - threshold) < 0.15, "the S-curve's midpoint sits near the threshold"


@needs_realdata
def test_precision_and_recall_on_edited_real_records():
    originals = []
    for line in (REALDATA / "toyhom_cmdd_im_sample.jsonl").open():
        row = json.loads(line)
        originals.append(row["ask"] + row["answer"])
    for line in (REALDATA / "medicalgpt_sft_medical.jsonl").open():
        originals.append("".join(turn["value"] for turn in json.loads(line)["conversations"]))
    originals = list(dict.fromkeys(t for t in originals if len(t) >= 20))
    generator = random.Random(1)
    records, planted = list(originals), set()
    for index in generator.sample(range(len(originals)), len(originals) // 2):
        planted.add(len(records))
        records.append(near_duplicate(originals[index], generator.choice(EDITS), generator))
    signatures = MinHasher(num_perm=128, ngram=3, seed=1).signatures(records)
    clusters = duplicate_clusters(signatures, threshold=0.7)
    removed = {member for cluster in clusters for member in cluster[1:]}
    assert all(cluster[0] < len(originals) for cluster in clusters), "the first occurrence (the original) is kept"
    precision, recall = len(removed & planted) / len(removed), len(removed & planted) / len(planted)
    assert precision >= 0.95 and recall >= 0.90, (precision, recall)


def test_dedup_within_then_across_datasets(tmp_path):
    consult = [
        {"instruction": "鼻塞流涕三天，体温37.5度，怎么办？", "input": "", "output": "考虑普通感冒，多休息多饮水。"},
        {"instruction": "鼻塞、流涕三天；体温37.5度，怎么办", "input": "", "output": "考虑普通感冒，多休息多饮水！"},
        {"instruction": "胃疼", "input": "", "output": "是"},  # short, kept and compared
        {"instruction": "胃疼", "input": "", "output": "是"},
        {"instruction": "孩子手足口病要隔离多久？", "input": "", "output": "一般隔离两周，直到症状消失。"},
    ]
    dialogues = [
        {
            "conversations": [
                {"from": "human", "value": "孩子手足口病要隔离多久？"},
                {"from": "gpt", "value": "一般隔离两周，直到症状消失。"},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "我头晕。"},
                {"from": "gpt", "value": "血压多少？"},
                {"from": "human", "value": "一百六。"},
                {"from": "gpt", "value": "建议心内科就诊。"},
            ]
        },
        {
            "conversations": [
                {"from": "human", "value": "我头晕。"},
                {"from": "gpt", "value": "血压多少？"},
                {"from": "human", "value": "一百二。"},
                {"from": "gpt", "value": "建议神经内科就诊，查头颅CT。"},
            ]
        },
    ]
    first, second = tmp_path / "consult.json", tmp_path / "dialogues.jsonl"
    first.write_text(json.dumps(consult, ensure_ascii=False))
    second.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues))
    out = tmp_path / "out"
    args = [
        "sfmed",
        "data",
        "dedup",
        "examples/yaml/tiny/dedup.yaml",
        f"datasets=[{first}, {second}]",
        f"output_dir={out}",
        "chunk_size=2",
    ]
    run(args)
    report = read_json(out / "dedup_report.json")
    assert report["datasets"]["consult.json"] == {
        "records": 5,
        "removed_within": 2,
        "short_records": 0,
        "kept": 3,
        "removed_across": 0,
    }
    assert report["datasets"]["dialogues.jsonl"]["removed_across"] == 1, "the hand-foot-mouth answer is in both"
    kept = json.loads((out / "consult.json").read_text())
    assert kept == [consult[0], consult[2], consult[4]], "first occurrences, in order, rows unchanged"
    kept_dialogues = [json.loads(line) for line in (out / "dialogues.jsonl").read_text().splitlines()]
    assert kept_dialogues == dialogues[1:], "multi-turn dialogues differing in later turns are both kept"
    clusters = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert {(c["stage"], c["kept"], tuple(c["removed"])) for c in clusters} == {
        ("within", "consult.json:1", ("consult.json:2",)),
        ("within", "consult.json:3", ("consult.json:4",)),
        ("across", "consult.json:5", ("dialogues.jsonl:1",)),
    }
    chunks = sorted((out / ".signatures").glob("consult.json.*.npy"))
    assert len(chunks) == 3, "signatures cached per chunk"
    chunks[-1].unlink()  # as if killed before the last chunk
    (out / "dedup_report.json").unlink()
    run(args)
    assert read_json(out / "dedup_report.json") == report
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "q"}\n')
    result = run(
        [
            "sfmed",
            "data",
            "dedup",
            "examples/yaml/tiny/dedup.yaml",
            f"datasets=[{bad}]",
            f"output_dir={tmp_path / 'bad_out'}",
        ],
        check=False,
    )
    assert result.returncode == 2 and "bad.jsonl: row 1: no 'text', 'conversations'" in result.stderr
