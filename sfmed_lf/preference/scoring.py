"""``sfmed pref score``: every pair scored by every reward model of the ensemble, at full precision.

A pair is encoded as LLaMA-Factory's pairwise preprocessing encodes it for training (the template's
``encode_oneturn`` for prompt + chosen and prompt + rejected, EOS for efficient-EOS templates, the same
``infer_seqlen`` truncation at ``cutoff_len``), so the model scores what it was trained on. The score is the value
head on the last hidden state at the last token, as LF's reward trainer reads it — in float32, not rounded (LF's
``do_predict`` writes two decimals). Batched, on the GPU when there is one. ``scores.jsonl`` gets one line per model
(all pairs), so a killed run re-scores only the models it had not finished. Pairs longer than ``cutoff_len`` are
truncated as in training and listed in ``score_report.json``; a pair without question or responses, or with two
identical responses, is an error naming its row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sfmed_lf.errors import DataError
from sfmed_lf.preference.config import PreferenceConfig
from sfmed_lf.preference.ensemble import rm_dir, value_head_file
from sfmed_lf.preference.pairs import prompt_messages, step_output
from sfmed_lf.utils.io import atomic_write_text
from sfmed_lf.utils.jsonl import ResumableJsonl
from sfmed_lf.utils.provenance import check_provenance, file_digest, model_fingerprint


class PairEncoder:
    def __init__(self, tokenizer: Any, template_name: str, cutoff_len: int) -> None:
        from llamafactory.data.processor.processor_utils import infer_seqlen
        from llamafactory.data.template import get_template_and_fix_tokenizer
        from llamafactory.hparams import DataArguments

        self.tokenizer, self.cutoff_len, self.infer_seqlen = tokenizer, cutoff_len, infer_seqlen
        self.template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template_name))

    def __call__(self, pair: dict[str, Any]) -> tuple[list[int], list[int], bool]:
        """(prompt + chosen ids, prompt + rejected ids, whether they were cut to cutoff_len)."""
        prompt = prompt_messages(pair)
        system = pair.get("system") or None
        prompt_ids, chosen = self.template.encode_oneturn(
            self.tokenizer, [*prompt, {"role": "assistant", "content": pair["chosen"]}], system
        )
        _, rejected = self.template.encode_oneturn(
            self.tokenizer, [*prompt, {"role": "assistant", "content": pair["rejected"]}], system
        )
        if self.template.efficient_eos:
            chosen, rejected = [*chosen, self.tokenizer.eos_token_id], [*rejected, self.tokenizer.eos_token_id]
        longer = max(len(chosen), len(rejected))
        source_len, target_len = self.infer_seqlen(len(prompt_ids), longer, self.cutoff_len)
        cut = len(prompt_ids) + longer > self.cutoff_len
        prompt_ids = prompt_ids[:source_len]
        return prompt_ids + chosen[:target_len], prompt_ids + rejected[:target_len], cut


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


def validate_pairs(path: Path, pairs: list[dict[str, Any]]) -> None:
    """Every pair needs a question and two different, non-empty responses; the first bad row is an error."""
    for number, pair in enumerate(pairs, start=1):
        for name in ("id", "instruction", "chosen", "rejected"):
            if not isinstance(pair.get(name), str) or not pair[name].strip():
                raise DataError(f"{path}: row {number}: field {name!r} must be non-empty text.")
        if pair["chosen"].strip() == pair["rejected"].strip():
            raise DataError(f"{path}: row {number}: fields 'chosen' and 'rejected' are identical.")


def score_pairs(config: PreferenceConfig) -> list[Path]:
    pairs_path = config.out / "pairs.jsonl"
    pairs = step_output(pairs_path, "judge")
    validate_pairs(pairs_path, pairs)
    path = config.out / "scores.jsonl"
    models = [rm_dir(config, i) for i in range(config.num_reward_models)]
    missing = [str(model) for model in models if value_head_file(model) is None]
    if missing:
        raise DataError(f"reward models missing: {', '.join(missing)}; run `sfmed pref train-rms` first.")
    check_provenance(path, {"pairs": file_digest(pairs_path), "cutoff_len": config.cutoff_len})
    output = ResumableJsonl(path, key="model")
    for index, model_dir in enumerate(tqdm(models, desc="score with reward models", unit="model")):
        fingerprint = model_fingerprint(str(model_dir))
        if str(index) in output:
            if output.records[str(index)]["fingerprint"] != fingerprint:
                raise DataError(f"{path}: model {index} was retrained since it was scored; delete {path} to re-score.")
            continue
        model = RewardModel(model_dir)
        encoder = PairEncoder(model.tokenizer, config.template, config.cutoff_len)
        chosen, rejected, truncated = [], [], []
        for start in range(0, len(pairs), config.score_batch_size):
            batch_pairs = pairs[start : start + config.score_batch_size]
            batch = [encoder(pair) for pair in batch_pairs]
            chosen += model.scores([c for c, _, _ in batch])
            rejected += model.scores([r for _, r, _ in batch])
            truncated += [pair["id"] for pair, (_, _, cut) in zip(batch_pairs, batch, strict=True) if cut]
        if index == 0:
            report = {"pairs": len(pairs), "cutoff_len": config.cutoff_len, "truncated": truncated}
            atomic_write_text(config.out / "score_report.json", json.dumps(report, indent=2) + "\n")
        output.append(
            {"model": index, "path": str(model_dir), "fingerprint": fingerprint, "chosen": chosen, "rejected": rejected}
        )
    return [path]
