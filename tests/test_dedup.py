"""Near-duplicate removal: signatures against their definition, exact confirmation at the threshold, no chaining,
whole-content comparison of ranking and multi-turn rows, quality on planted copies and boilerplate, `sfmed data
dedup` end to end (within, then across datasets; resumable; errors), and the datatrove engine against the native
one across task and worker counts."""

from __future__ import annotations

import itertools
import json
import random
import unicodedata

import numpy as np
import pytest

from sfmed_lf.data_prep.config import DedupConfig
from sfmed_lf.data_prep.dedup import DedupStep, dedup_texts, encode_chunk
from sfmed_lf.data_prep.keep import keep_first
from sfmed_lf.data_prep.lsh import band_parameters, buckets_from_groups, collision_probability
from sfmed_lf.data_prep.minhash import MinHasher, exact_jaccard, normalize, normalize_batch
from sfmed_lf.data_prep.perturb import (
    boilerplate_consultation,
    consultation,
    edited_copy,
    planted_copies,
)
from tests.helpers import REALDATA, read_json, run

needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is absent")
GENERAL = "高血压患者应当低盐饮食，规律服药，定期监测血压。糖尿病患者要控制饮食，适量运动，按时复查血糖。"
MASK = 2**64 - 1


def config(**overrides: object) -> DedupConfig:
    return DedupConfig(datasets=["-"], output_dir="-", **overrides)


def fmix64(value: int) -> int:
    value ^= value >> 33
    value = (value * 0xFF51AFD7ED558CCD) & MASK
    value ^= value >> 33
    value = (value * 0xC4CEB9FE1A85EC53) & MASK
    return value ^ (value >> 33)


def reference_signature(hasher: MinHasher, text: str) -> np.ndarray:
    """The signature by its definition, one shingle at a time in Python integers."""
    codes = [ord(c) for c in normalize(text)]
    width = min(hasher.ngram, len(codes))
    shingles = []
    for start in range(max(len(codes) - width + 1, 1)):
        value = width
        for code in codes[start : start + width]:
            value = (value * 0x100000001B3 + code) & MASK
        shingles.append(fmix64(value))
    return np.array(
        [
            min(min(((int(a) * s + int(b)) & MASK) >> 32 for s in shingles), 0xFFFFFFFE)
            for a, b in zip(hasher.a, hasher.b, strict=True)
        ],
        dtype=np.uint32,
    )


def test_signatures_equal_their_definition_and_normalisation_is_nfkc():
    texts = [
        "",
        "短",
        "两字",
        GENERAL,
        GENERAL[::-1] * 3,
        "Ａｓｐｉｒｉｎ，每日一次！",
        "aspirin每日一次",
        "体温38℃，①",
    ]
    hasher = MinHasher(num_perm=32, ngram=3, seed=7)
    signatures = hasher.signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        assert (signature == reference_signature(hasher, text)).all(), text
    wide = ["𠀀𠀁病", GENERAL + "𠀀"]  # beyond 16 bits: the uint32 path of the same kernels
    for text, signature in zip(wide, hasher.signatures(wide), strict=True):
        assert (signature == reference_signature(hasher, text)).all(), text
    assert (signatures[5] == signatures[6]).all(), "full-width letters, case and punctuation are normalised away"
    tricky = [*texts, "ｅ\u0301\u3000ｘ", "e<\u0301", "\ud800孤立", "ﬁ℃㎎"]
    assert normalize_batch(tricky) == [normalize(t) for t in tricky]
    assert normalize("体温38℃") == unicodedata.normalize("NFKC", "体温38°c").replace("°", "")


def test_signature_agreement_estimates_jaccard_without_bias():
    generator = random.Random(0)
    hasher = MinHasher(num_perm=256, ngram=3)
    errors = []
    for _ in range(60):
        first = consultation(generator)
        second = edited_copy(first, generator.choice([0.03, 0.08, 0.15]), generator)
        estimate = np.mean(hasher.signatures([first])[0] == hasher.signatures([second])[0])
        errors.append(estimate - exact_jaccard(first, second, 3))
    assert abs(np.mean(errors)) < 0.015 and np.std(errors) < 0.045, (np.mean(errors), np.std(errors))


def test_banding_finds_pairs_at_the_threshold():
    for threshold in (0.5, 0.72, 0.9):
        bands, rows = band_parameters(threshold, 128)
        assert bands * rows <= 128
        assert collision_probability(threshold, bands, rows) >= 0.99


def test_confirmation_is_exact_at_the_threshold():
    """Copies whose exact Jaccard lies just above the threshold are removed (banding finds a pair at the threshold
    with probability 0.995), those just below all kept: an estimate (sd ~0.04 at 128 permutations) would lose about
    half of either side."""
    generator = random.Random(5)
    settings = config(ngram=2, threshold=0.72)
    originals, above, below = [], [], []
    while len(above) < 150 or len(below) < 150:
        original = consultation(generator)
        copy = edited_copy(original, generator.uniform(0.05, 0.12), generator)
        similarity = exact_jaccard(original, copy, 2)
        side = above if 0.72 <= similarity < 0.75 else below if 0.69 <= similarity < 0.72 else None
        if side is not None and len(side) < 150:
            side.append(len(originals) + 1)
            originals += [original, copy]
    result = dedup_texts(originals, settings)
    assert result.kept[below].all(), "a copy below the threshold was removed"
    assert (~result.kept[above]).mean() >= 0.97, (~result.kept[above]).mean()
    removed = np.flatnonzero(~result.kept)
    for index in removed:
        assert (
            abs(result.similarity[index] - exact_jaccard(originals[index], originals[result.kept_for[index]], 2)) < 1e-9
        )


def test_keep_rule_compares_every_kept_bucket_member_and_no_removed_one():
    """One bucket holding a distinct record first, then a record and its copy; and a chain X ~ Y ~ Z with X !~ Z."""
    generator = random.Random(9)
    first, second = consultation(generator), consultation(generator)
    chain = [consultation(generator)]
    while len(chain) < 3:
        candidate = edited_copy(chain[-1], 0.06, generator)
        if exact_jaccard(candidate, chain[-1], 2) > 0.75 and (
            len(chain) < 2 or exact_jaccard(candidate, chain[0], 2) < 0.65
        ):
            chain.append(candidate)
    texts = [first, second, edited_copy(second, 0.02, generator), *chain]
    encoded = encode_chunk((texts, 128, 2, 1))
    one_bucket = buckets_from_groups(len(texts), [[[0, 1, 2]], [[3, 4, 5]]])
    result = keep_first(
        one_bucket, encoded.signatures, encoded.codes, encoded.offsets, np.zeros(len(texts), np.int32),
        ngram=2, threshold=0.72, max_scan=10,
    )  # fmt: skip
    assert result.kept_for.tolist() == [-1, -1, 1, -1, 3, -1], "the copy goes for its original, the chain's end stays"


def test_no_chaining_on_overlapping_windows():
    """Windows sliding two characters at a time over one long text: each is similar to its neighbours only. A
    connected-components rule keeps one; ours keeps one whenever the distance to the last kept one grows too big,
    and every removed window is within the threshold of its kept window."""
    generator = random.Random(2)
    text = "".join(consultation(generator) for _ in range(60))
    windows = [text[start * 2 : start * 2 + 200] for start in range(4000)]
    settings = config()
    result = dedup_texts(windows, settings)
    last_kept = [0]  # the same rule walked along the text: a window goes when it is close to the last kept one
    for index in range(1, len(windows)):
        if exact_jaccard(windows[index], windows[last_kept[-1]], settings.ngram) < settings.threshold:
            last_kept.append(index)
    assert result.kept.sum() == len(last_kept) > 100, (result.kept.sum(), len(last_kept))
    for index in np.flatnonzero(~result.kept)[::97]:
        partner = result.kept_for[index]
        assert result.kept[partner] and partner < index
        assert exact_jaccard(windows[index], windows[partner], settings.ngram) >= settings.threshold


@pytest.mark.parametrize("seed", [0, 1])
def test_quality_on_planted_copies_and_boilerplate(seed):
    generator = random.Random(seed)
    settings = config()
    for make, name in ((consultation, "edited"), (boilerplate_consultation, "boilerplate")):
        planted = planted_copies([make(generator) for _ in range(700)], (0.02, 0.05, 0.08), 70, generator)
        result = dedup_texts(planted.records, settings)
        copies = np.array(planted.copy_of) >= 0
        removed = ~result.kept
        recall = (removed & copies).sum() / copies.sum()
        precision = (removed & copies).sum() / max(removed.sum(), 1)
        assert recall >= 0.95 and precision >= 0.99, (name, recall, precision)
        assert (result.kept_for[removed & copies] == np.array(planted.copy_of)[removed & copies]).mean() > 0.95


def register(directory, **entries):
    """A dataset_info.json in ``directory``: name -> entry (file_name: the file of that name in it)."""
    files = {path.stem: path.name for path in directory.iterdir() if path.suffix in (".json", ".jsonl")}
    info = {name: {"file_name": files[name], **entry} for name, entry in entries.items()}
    (directory / "dataset_info.json").write_text(json.dumps(info))


def write_rows(path, rows):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def test_ranking_and_multi_turn_rows_are_compared_on_their_whole_content(tmp_path):
    generator = random.Random(3)
    prompt = consultation(generator).split("\n")[0]
    answers = [consultation(generator).split("\n")[1] for _ in range(4)]
    pairs = [
        {"instruction": prompt, "input": "", "chosen": answers[0], "rejected": answers[1]},
        {"instruction": prompt, "input": "", "chosen": answers[2], "rejected": answers[3]},  # same prompt only
        {"instruction": prompt, "input": "", "chosen": answers[0], "rejected": answers[1] + "。"},  # a copy
        {
            "conversations": [{"from": "human", "value": prompt}],
            "chosen": {"from": "gpt", "value": answers[2]},
            "rejected": {"from": "gpt", "value": answers[0]},
        },
    ]
    turns = [consultation(generator).split("\n") for _ in range(3)]
    dialogues = [
        {
            "conversations": [
                {"from": r, "value": v} for r, v in zip(("human", "gpt") * 2, [*turns[0], *turns[1]], strict=True)
            ]
        },
        {
            "conversations": [
                {"from": r, "value": v} for r, v in zip(("human", "gpt") * 2, [*turns[0], *turns[2]], strict=True)
            ]
        },
    ]
    out = tmp_path / "out"
    settings = DedupConfig(
        files=[str(write_rows(tmp_path / "pairs.json", pairs)), str(write_rows(tmp_path / "chat.jsonl", dialogues))],
        output_dir=str(out),
        num_proc=1,
    )
    DedupStep(settings).run()
    assert json.loads((out / "pairs.json").read_text()) == [pairs[0], pairs[1], pairs[3]]
    assert [json.loads(line) for line in (out / "chat.jsonl").read_text().splitlines()] == dialogues


def test_chunks_of_both_code_widths(tmp_path):
    """Chunks whose characters all fit in 16 bits are stored as such; one with a rarer CJK character is not."""
    rows = [
        {"text": GENERAL},
        {"text": "𠀀" + GENERAL},
        {"text": GENERAL + "。"},
        {"text": consultation(random.Random(1))},
    ]
    settings = DedupConfig(files=[str(write_rows(tmp_path / "t.jsonl", rows))], output_dir=str(tmp_path / "o"))
    settings.chunk_size, settings.num_proc = 1, 1
    DedupStep(settings).run()
    kept = [json.loads(line) for line in (tmp_path / "o" / "t.jsonl").read_text().splitlines()]
    assert kept == [rows[0], rows[3]]


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
    ]
    write_rows(tmp_path / "consult.json", consult), write_rows(tmp_path / "dialogues.jsonl", dialogues)
    write_rows(tmp_path / "bad.jsonl", [{"prompt": "q"}])
    register(tmp_path, consult={}, dialogues={"formatting": "sharegpt"}, bad={})
    out = tmp_path / "out"
    args = [
        "sfmed",
        "data",
        "dedup",
        "examples/yaml/tiny/dedup.yaml",
        "datasets=[consult, dialogues]",
        f"dataset_dir={tmp_path}",
        f"output_dir={out}",
        "chunk_size=2",
    ]
    run(args)
    report = read_json(out / "dedup_report.json")
    assert report["datasets"]["consult.json"] == {
        "records": 5,
        "removed_within": 2,
        "removed_across": 0,
        "kept": 3,
        "short_records": 0,
    }
    assert report["datasets"]["dialogues.jsonl"]["removed_across"] == 1, "the hand-foot-mouth answer is in both"
    assert report["clusters"]["sizes"] == {"2": 3}
    assert json.loads((out / "consult.json").read_text()) == [consult[0], consult[2], consult[4]]
    clusters = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(c["stage"], c["kept"], c["removed"]) for c in clusters] == [
        ("within", "consult.json:1", ["consult.json:2"]),
        ("within", "consult.json:3", ["consult.json:4"]),
        ("across", "consult.json:5", ["dialogues.jsonl:1"]),
    ]
    assert all(s >= report["parameters"]["threshold"] for c in clusters for s in c["similarity"])
    chunks = sorted((out / ".signatures").glob("consult.json.*.npz"))
    assert len(chunks) == 3, "signatures cached per chunk"
    chunks[-1].unlink()  # as if killed before the last chunk
    (out / "dedup_report.json").unlink()
    run(args)
    rerun = read_json(out / "dedup_report.json")
    assert {k: v for k, v in rerun.items() if k != "seconds"} == {k: v for k, v in report.items() if k != "seconds"}
    dedup = ["sfmed", "data", "dedup", f"dataset_dir={tmp_path}"]
    result = run([*dedup, "datasets=[bad]", f"output_dir={tmp_path / 'bad_out'}"], check=False)
    assert result.returncode == 2 and "bad.jsonl:1: field 'instruction': the question" in result.stderr
    result = run([*dedup, "datasets=[consult]", f"output_dir={tmp_path}"], check=False)
    assert result.returncode == 2 and "would overwrite" in result.stderr


@pytest.mark.slow
def test_datatrove_engine_equals_native_across_tasks_and_workers(tmp_path):
    from sfmed_lf.data_prep.dedup_datatrove import DatatroveDedup

    generator = random.Random(4)
    planted = planted_copies([boilerplate_consultation(generator) for _ in range(150)], (0.03, 0.08), 20, generator)
    for source in range(10):  # buckets of four: an original and three copies, the copies also close to each other
        planted.records += [edited_copy(planted.records[source], 0.02, generator) for _ in range(3)]
    half = len(planted.records) // 2
    first = write_rows(tmp_path / "a.json", [{"instruction": t, "output": "。"} for t in planted.records[:half]])
    second = write_rows(tmp_path / "b.jsonl", [{"text": t} for t in planted.records[half:]])
    outputs = {}
    for name, engine, tasks, workers in (
        ("native", "native", 1, 1),
        ("dt1", "datatrove", 1, 1),
        ("dt3", "datatrove", 3, 2),
    ):
        settings = DedupConfig(
            files=[str(first), str(second)],
            output_dir=str(tmp_path / name),
            engine=engine,
            tasks=tasks,
            workers=workers,
            num_proc=1,
            executor_options={"start_method": "fork"} if workers > 1 else None,  # fork: no re-import per worker
        )
        (DatatroveDedup(settings) if engine == "datatrove" else DedupStep(settings)).run()
        outputs[name] = [(tmp_path / name / f).read_text() for f in ("a.json", "b.jsonl", "removed.jsonl")]
    assert outputs["dt1"] == outputs["native"] and outputs["dt3"] == outputs["native"]
    removed = json.loads(outputs["native"][2].splitlines()[0])
    assert removed["removed"], "the planted copies are found"


@needs_realdata
def test_edited_copies_of_real_records_are_found():
    originals = []
    for line in (REALDATA / "toyhom_cmdd_im_sample.jsonl").open(encoding="utf-8"):
        row = json.loads(line)
        originals.append(row["ask"] + "\n" + row["answer"])
    for line in (REALDATA / "medicalgpt_sft_medical.jsonl").open(encoding="utf-8"):
        originals.append("\n".join(turn["value"] for turn in json.loads(line)["conversations"]))
    originals = list(dict.fromkeys(t for t in originals if len(t) >= 40))
    planted = planted_copies(originals, (0.02, 0.05, 0.08), len(originals) // 6, random.Random(1))
    result = dedup_texts(planted.records, config())
    copies, removed = np.array(planted.copy_of) >= 0, ~result.kept
    precision, recall = (removed & copies).sum() / removed.sum(), (removed & copies).sum() / copies.sum()
    assert precision >= 0.99 and recall >= 0.95, (precision, recall)


@pytest.mark.parametrize("name", ["slurm", "ray"])
def test_example_yamls_build_the_datatrove_stages_past_one_machine(tmp_path, name):
    """The Slurm and Ray examples load and chain the six stages (nothing is submitted here)."""
    from sfmed_lf.config_files import load_config
    from sfmed_lf.data_prep.dedup_datatrove import DatatroveDedup

    write_rows(tmp_path / "rows.jsonl", [{"text": consultation(random.Random(n))} for n in range(5)])
    register(tmp_path, rows={"columns": {"prompt": "text"}})
    overrides = ["datasets=[rows]", f"dataset_dir={tmp_path}", f"output_dir={tmp_path}/o"]
    settings = load_config(DedupConfig, f"examples/yaml/sfmed_dedup_sft_{name}.yaml", overrides)
    executors = DatatroveDedup(settings).executors()
    assert [type(e).__name__ for e in executors] == [f"{name.capitalize()}PipelineExecutor"] * 6
    assert [e.world_size for e in executors] == [5, 25, 5, 1, 5, 1], "tasks capped by the records; a task per band"
    assert all(e.depends is previous for previous, e in itertools.pairwise(executors))
