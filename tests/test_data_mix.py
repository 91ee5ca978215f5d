"""`sfmed data mix`: token counts with the model's tokenizer, and interleave_probs under which LLaMA-Factory's own
mixing reaches the medical : general token ratio; the written YAML trains with `llamafactory-cli train`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from transformers import AutoTokenizer

from sfmed_lf.tiny_model import build_tiny_model
from tests.helpers import lf_train, read_json, run

SHARES = {"medical": 1.3, "general": 1.4}
CHARS = "心肺肝肾脾胃血压糖尿病感冒发热咳嗽头痛治疗检查药物患者医生建议休息饮食运动睡眠"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def corpora(tmp_path) -> Path:
    """Three sources of very different sizes and record lengths, each record tagged with its source."""
    generator = random.Random(0)
    sizes = {"med_short": (900, 12, 30), "med_long": (150, 150, 260), "general": (300, 60, 120)}
    info = {}
    for name, (records, low, high) in sizes.items():
        rows = [
            {"text": f"{name}#{i} " + "".join(generator.choices(CHARS, k=generator.randint(low, high)))}
            for i in range(records)
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        info[name] = {"file_name": f"{name}.jsonl", "columns": {"prompt": "text"}}
    info["on_hub"] = {"hf_hub_url": "someone/corpus"}
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    return tmp_path


def mix(corpora: Path, tiny: Path, strategy: str, *extra: str) -> dict:
    config = {
        "medical": ["med_short", "med_long"],
        "general": ["general"],
        "model_name_or_path": str(tiny),
        "dataset_dir": str(corpora),
        "medical_share": SHARES["medical"],
        "general_share": SHARES["general"],
        "mix_strategy": strategy,
        "train_yaml": "examples/yaml/tiny/pt.yaml",
        "output_dir": str(corpora / strategy),
    }
    (corpora / "mix.yaml").write_text(yaml.safe_dump(config))
    run(["sfmed", "data", "mix", str(corpora / "mix.yaml"), *extra])
    return read_json(corpora / strategy / "mix_report.json")


def lf_mixed_token_shares(corpora: Path, tiny: Path, options: dict) -> dict[str, float]:
    """Mix with LLaMA-Factory's own loader and merge_dataset, then count tokens per source group."""
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.hparams import get_train_args

    model_args, data_args, training_args, _, _ = get_train_args(
        {
            "model_name_or_path": str(tiny),
            "stage": "pt",
            "do_train": True,
            "finetuning_type": "full",
            "template": "sfmed",
            "output_dir": str(corpora / "unused"),
            "overwrite_cache": True,
            "report_to": "none",
            "seed": 42,
            **options,
        }
    )
    merged = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, "pt")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    tokens = {"medical": 0, "general": 0}
    for example in merged:
        text = example["_prompt"][0]["content"]
        group = "general" if text.startswith("general#") else "medical"
        tokens[group] += len(tokenizer(text + tokenizer.eos_token, add_special_tokens=False)["input_ids"])
    return {group: count / sum(tokens.values()) for group, count in tokens.items()}


@pytest.mark.parametrize("strategy", ["interleave_under", "interleave_over"])
def test_interleave_probs_give_the_token_ratio_in_llamafactory(strategy, corpora, tiny):
    report = mix(corpora, tiny, strategy)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    for source in report["sources"]:  # counts equal a direct count with the model's tokenizer
        rows = [json.loads(line)["text"] for line in (corpora / f"{source['dataset']}.jsonl").read_text().splitlines()]
        direct = sum(len(tokenizer(text + tokenizer.eos_token)["input_ids"]) for text in rows)
        assert (source["records"], source["tokens"]) == (len(rows), direct)
    target = SHARES["medical"] / sum(SHARES.values())
    assert report["groups"]["medical"]["expected_share"] == pytest.approx(target, abs=1e-9)
    passes = [source["expected_passes"] for source in report["sources"]]
    assert (max(passes) if strategy == "interleave_under" else min(passes)) == pytest.approx(1.0)

    written = yaml.safe_load((corpora / strategy / "pt_mix.yaml").read_text())
    assert written["stage"] == "pt" and written["mix_strategy"] == strategy
    options = {key: written[key] for key in ("dataset", "dataset_dir", "mix_strategy", "interleave_probs")}
    shares = lf_mixed_token_shares(corpora, tiny, options)
    assert shares["medical"] == pytest.approx(target, abs=0.03), shares
    naive = report["groups"]["medical"]["tokens"] / sum(g["tokens"] for g in report["groups"].values())
    assert abs(naive - target) > 0.1, "the fixture's natural ratio must differ from the target for this to test"


def test_written_yaml_trains_with_llamafactory_cli(corpora, tiny):
    mix(corpora, tiny, "interleave_under")
    output = corpora / "trained"
    lf_train(
        str(corpora / "interleave_under" / "pt_mix.yaml"),
        f"model_name_or_path={tiny}",
        f"output_dir={output}",
        "max_steps=2",
    )
    assert (output / "model.safetensors").is_file()


def test_mix_errors_name_the_dataset(corpora, tiny):
    base = ["model_name_or_path=" + str(tiny), f"dataset_dir={corpora}", f"output_dir={corpora / 'out'}"]
    for overrides, message in [
        (["medical=[nope]", "general=[general]"], "no dataset 'nope'"),
        (["medical=[on_hub]", "general=[general]"], "on_hub is not a local file"),
        (["medical=[general]", "general=[general]"], "named as both medical and general"),
        (["medical=[med_short]", "general=[general]", "mix_strategy=concat"], "'concat' is not one of"),
    ]:
        result = run(["sfmed", "data", "mix", *base, *overrides], check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr
