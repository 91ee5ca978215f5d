"""LLaMA-Factory's DPO trainer with SF-Med's online-merging optimizer (SF-Med §3.3).

``sfmed_lf.integration`` installs this class as ``llamafactory.train.dpo.trainer.CustomDPOTrainer``; LLaMA-Factory's
DPO workflow imports that name when it runs, so ``stage: dpo`` picks it up. With ``sfmed_merge_method: none`` it
behaves exactly like the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer

from sfmed_lf.merging.optimizer import OnlineMergingAdamW
from sfmed_lf.merging.task_vector import TaskVectorSource
from sfmed_lf.train.replicas import ReplicaConsistencyCallback
from sfmed_lf.utils.io import atomic_write_text

if TYPE_CHECKING:
    from sfmed_lf.hparams import SFMedFinetuningArguments

MERGE_REPORT_NAME = "sfmed_online_merging.json"


class SFMedDPOTrainer(CustomDPOTrainer):
    def __init__(self, *args: Any, finetuning_args: SFMedFinetuningArguments, **kwargs: Any) -> None:
        super().__init__(*args, finetuning_args=finetuning_args, **kwargs)
        self._task_vector_source: TaskVectorSource | None = None
        if not getattr(finetuning_args, "online_merging_enabled", False):
            return
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise NotImplementedError(
                "sfmed online merging runs single-process or under DDP (FORCE_TORCHRUN=1 without `deepspeed:` or "
                "`fsdp:`); DeepSpeed ZeRO and FSDP support is not implemented yet."
            )
        self.merge_config = finetuning_args.online_merging_config(default_seed=self.args.seed)
        sft_model = finetuning_args.sfmed_merge_sft_model or self.model.config._name_or_path
        self._task_vector_source = TaskVectorSource(sft_model, finetuning_args.sfmed_merge_base_model)
        self._task_vector_source.check_compatible(
            {name: param.shape for name, param in self.model.named_parameters() if param.requires_grad}
        )
        if finetuning_args.sfmed_merge_check_replicas:
            self.add_callback(ReplicaConsistencyCallback())

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        if self.optimizer is None and self._task_vector_source is not None:
            self.optimizer = OnlineMergingAdamW(
                self._named_parameter_groups(),
                config=self.merge_config,
                task_vector_source=self._task_vector_source,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
            )
        return super().create_optimizer(*args, **kwargs)

    def _named_parameter_groups(self) -> list[dict[str, Any]]:
        """Trainer's usual split (no decay for biases and norms), with the parameter names online merging needs."""
        decay_names = set(self.get_decay_parameter_names(self.model))
        groups = {
            True: {"params": [], "param_names": [], "weight_decay": self.args.weight_decay},
            False: {"params": [], "param_names": [], "weight_decay": 0.0},
        }
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                group = groups[name in decay_names]
                group["params"].append(param)
                group["param_names"].append(name)
        return [group for group in groups.values() if group["params"]]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        if isinstance(self.optimizer, torch.optim.Optimizer) and self.is_world_process_zero():
            self._write_merge_report()
        return output

    def _write_merge_report(self) -> None:
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
        if not isinstance(optimizer, OnlineMergingAdamW):
            return
        trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        tau_bytes = optimizer.persistent_merge_bytes()
        report = {
            "method": self.merge_config.method.value,
            "keep_prob": self.merge_config.keep_prob,
            "alpha": self.merge_config.alpha,
            "rescale": self.merge_config.rescale.value,
            "seed": self.merge_config.seed,
            "trainable_parameters": trainable,
            "tau_bytes": tau_bytes,
            "tau_bytes_over_fp32_copy": tau_bytes / (4 * trainable),
        }
        atomic_write_text(Path(self.args.output_dir) / MERGE_REPORT_NAME, json.dumps(report, indent=2) + "\n")
