"""``sfmed pref score``: every pair scored by every reward model of the ensemble, at full precision.

A pair is encoded as LLaMA-Factory's pairwise preprocessing encodes it for training
(:meth:`sfmed_lf.formats.lf_template.ChatTemplate.pair_ids`), so the model scores what it was trained on. The score
is the value head on the last hidden state at the last token, as LF's reward trainer reads it — in float32, not
rounded (LF's ``do_predict`` writes two decimals). Batched, on the GPU when there is one. ``scores.jsonl`` gets one
line per model with every pair's scores keyed by the pair's content (:attr:`PreferencePair.key`), so a killed run
re-scores only the models it had not finished and a later step never applies a score to another pair. Pairs longer
than ``cutoff_len`` are truncated as in training and listed in ``score_report.json``; a pair without question or
responses, or with two identical responses, is an error naming its file, line and field.

With ``heldout_dataset`` (a ranking dataset of ``heldout_dataset_dir`` the reward models never trained on), every
model also scores those pairs, and ``score_report.json`` gives each model's and the ensemble's (mean score) held-out
accuracy: the share of pairs whose chosen answer scores higher — overall and, where the pairs name it, per error kind
of the rejected answer (``by_error_kind``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.formats.lf_template import ChatTemplate
from sfmed_lf.formats.pairs import PreferencePair
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.preference.ensemble import rm_dir, value_head_file
from sfmed_lf.preference.pairs import SCORE_FIELDS, load_pairs, pairs_digest
from sfmed_lf.utils.io import atomic_write_text, read_json
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, model_fingerprint


class RewardModel:
    """A reward model as LLaMA-Factory saves it: the causal LM (or a LoRA adapter on it) plus value_head."""

    def __init__(self, path: Path) -> None:
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        head_path = value_head_file(path)
        if head_path is None:
            raise DataError(f"{path}: no value head; is it a reward model trained by `llamafactory-cli` (stage rm)?")
        adapter = path / "adapter_config.json"
        if adapter.is_file():
            from peft import PeftModel

            base = json.loads(adapter.read_text())["base_model_name_or_path"]
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model = model.to(self.device).eval()
        if head_path.suffix == ".safetensors":
            head = load_file(str(head_path))
        else:
            head = torch.load(head_path, weights_only=True)
        self.weight = head["v_head.summary.weight"].to(self.device, torch.float32)
        self.bias = head["v_head.summary.bias"].to(self.device, torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(path)

    def scores(self, sequences: list[list[int]]) -> list[float]:
        torch = self.torch
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        length = max(len(ids) for ids in sequences)
        input_ids = torch.tensor([ids + [pad] * (length - len(ids)) for ids in sequences], device=self.device)
        mask = torch.tensor([[1] * len(ids) + [0] * (length - len(ids)) for ids in sequences], device=self.device)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
            values = hidden.float() @ self.weight.T + self.bias  # [batch, length, 1]
            last = (mask.sum(dim=1) - 1).view(-1, 1, 1)
            return values.gather(1, last).view(-1).tolist()


def pair_scores(
    model: RewardModel, template: ChatTemplate, pairs: list[PreferencePair], config: PreferenceConfig
) -> tuple[dict[str, list[float]], list[str]]:
    """({pair key: [chosen score, rejected score]}, ids of the pairs cut to cutoff_len)."""
    scores: dict[str, list[float]] = {}
    truncated = []
    for start in range(0, len(pairs), config.score_batch_size):
        batch_pairs = pairs[start : start + config.score_batch_size]
        batch = [template.pair_ids(pair, config.cutoff_len) for pair in batch_pairs]
        chosen = model.scores([c for c, _, _ in batch])
        rejected = model.scores([r for _, r, _ in batch])
        for pair, chosen_score, rejected_score, (_, _, cut) in zip(batch_pairs, chosen, rejected, batch, strict=True):
            scores[pair.key] = [chosen_score, rejected_score]
            if cut:
                truncated.append(pair.id)
    return scores, truncated


def heldout_accuracy(records: list[dict], pairs: list[PreferencePair]) -> dict[str, Any]:
    """Each model's share of held-out pairs with chosen above rejected, and the ensemble's on mean scores; by error
    kind too where the pairs name one (``metadata.error``, as the generated world's do), so a report shows which
    kind of wrong answer the reward models miss rather than one mean."""
    result = _accuracy(records, pairs)
    kinds: dict[str, list[PreferencePair]] = defaultdict(list)
    for pair in pairs:
        kinds[pair.error_kind or "unlabelled"].append(pair)
    if set(kinds) != {"unlabelled"}:
        result["by_error_kind"] = {kind: _accuracy(records, group) for kind, group in sorted(kinds.items())}
    return result


def _accuracy(records: list[dict], pairs: list[PreferencePair]) -> dict[str, Any]:
    per_model = [sum(r["heldout"][p.key][0] > r["heldout"][p.key][1] for p in pairs) / len(pairs) for r in records]
    mean = [[sum(r["heldout"][p.key][side] for r in records) / len(records) for side in (0, 1)] for p in pairs]
    ensemble = sum(c > r for c, r in mean) / len(pairs)
    return {"pairs": len(pairs), "accuracy_per_model": per_model, "ensemble_accuracy": ensemble}


def score_pairs(config: PreferenceConfig) -> list[Path]:
    pairs = load_pairs(*config.pairs_source())
    path = config.out / "scores.jsonl"
    models = [rm_dir(config, i) for i in range(config.num_reward_models)]
    missing = [str(model) for model in models if value_head_file(model) is None]
    if missing:
        raise DataError(f"reward models missing: {', '.join(missing)}; run `sfmed pref train-rms` first.")
    heldout = load_pairs(config.heldout_dataset_dir, config.heldout_dataset) if config.heldout_dataset else []
    inputs = {"pairs": pairs_digest(pairs), "cutoff_len": config.cutoff_len}
    if heldout:
        inputs["heldout"] = pairs_digest(heldout)
    check_provenance(path, inputs)
    output = ResumableJsonl(path, key="model", fields=SCORE_FIELDS, written_by="sfmed pref score")
    for index, model_dir in enumerate(tqdm(models, desc="score with reward models", unit="model")):
        fingerprint = model_fingerprint(str(model_dir))
        if str(index) in output:
            if output.records[str(index)]["fingerprint"] != fingerprint:
                raise DataError(f"{path}: model {index} was retrained since it was scored; delete {path} to re-score.")
            if heldout and "heldout" not in output.records[str(index)]:
                raise DataError(f"{path}: model {index} has no held-out scores; delete {path} to re-score.")
            continue
        model = RewardModel(model_dir)
        template = ChatTemplate(model.tokenizer, config.template)
        scores, truncated = pair_scores(model, template, pairs, config)
        record = {"model": index, "path": str(model_dir), "fingerprint": fingerprint, "scores": scores}
        if heldout:
            record["heldout"], _ = pair_scores(model, template, heldout, config)
        if index == 0:
            report = {"pairs": len(pairs), "cutoff_len": config.cutoff_len, "truncated": truncated}
            atomic_write_text(config.out / "score_report.json", json.dumps(report, indent=2) + "\n")
        output.append(record)
    if heldout:
        report = read_json(config.out / "score_report.json", "sfmed pref score")
        records = [output.records[str(index)] for index in range(len(models))]
        report["heldout"] = {
            "dataset": config.heldout_dataset,
            **heldout_accuracy(records, heldout),
        }
        atomic_write_text(config.out / "score_report.json", json.dumps(report, indent=2) + "\n")
    return [path]
