"""LLaMA-Factory's DPO trainer with SF-Med's online-merging optimizer (SF-Med §3.3).

``sfmed_lf.integration`` installs this class as ``llamafactory.train.dpo.trainer.CustomDPOTrainer``; LLaMA-Factory's
DPO workflow imports that name when it runs, so ``stage: dpo`` picks it up. With ``sfmed_merge_method: none`` it
behaves exactly like the original.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from llamafactory.train.dpo.trainer import CustomDPOTrainer
from transformers.utils import logging

from sfmed_lf.merging.layout import Segment, fsdp1_layouts, zero3_layouts, zero12_layouts
from sfmed_lf.merging.optimizer import OnlineMergingAdamW
from sfmed_lf.merging.task_vector import TaskVectorSource
from sfmed_lf.train.replicas import ReplicaConsistencyCallback
from sfmed_lf.utils.io import atomic_write_text

if TYPE_CHECKING:
    from sfmed_lf.hparams import SFMedFinetuningArguments

MERGE_REPORT_NAME = "sfmed_online_merging.json"
logger = logging.get_logger(__name__)


class SFMedDPOTrainer(CustomDPOTrainer):
    def __init__(self, *args: Any, finetuning_args: SFMedFinetuningArguments, **kwargs: Any) -> None:
        super().__init__(*args, finetuning_args=finetuning_args, **kwargs)
        self._task_vector_source: TaskVectorSource | None = None
        if not getattr(finetuning_args, "online_merging_enabled", False):
            return
        self._refuse_dropped_fsdp()
        self.merge_config = finetuning_args.online_merging_config(default_seed=self.args.seed)
        if not str(self.args.optim).startswith("adamw_torch"):
            logger.warning(
                f"optim={self.args.optim} is replaced by sfmed online merging ({self.merge_config.method.value}), "
                "which is AdamW with merged updates; adam_beta1/2, adam_epsilon and weight_decay apply."
            )
        sft_model = finetuning_args.sfmed_merge_sft_model or self.model.config._name_or_path
        self._task_vector_source = TaskVectorSource(sft_model, finetuning_args.sfmed_merge_base_model)
        self._task_vector_source.check_compatible(
            {  # ZeRO-3 parameters are empty placeholders; ds_shape is their real shape
                name: getattr(param, "ds_shape", param.shape)
                for name, param in self.model.named_parameters()
                if param.requires_grad
            }
        )
        # Under ZeRO-3 and FSDP every rank holds different shards by design, so there is nothing to compare.
        if finetuning_args.sfmed_merge_check_replicas and self._zero_stage() < 3 and not self.is_fsdp_enabled:
            self.add_callback(ReplicaConsistencyCallback())

    def _refuse_dropped_fsdp(self) -> None:
        """accelerate enables FSDP only for accelerator ranks (GPU, NPU, XPU...): with an `fsdp` option on CPU, or in a
        single process, it trains single-process or DDP instead without a word. Merging in a layout other than the
        one configured would go unnoticed, so it stops here."""
        if self.args.fsdp and not self.is_fsdp_enabled:
            options = " ".join(getattr(option, "value", str(option)) for option in self.args.fsdp)
            distributed_type = getattr(self.accelerator.state.distributed_type, "value", "unknown")
            raise ValueError(
                f"sfmed online merging: `fsdp: {options}` is set, but accelerate is not running FSDP here "
                f"(distributed type {distributed_type}): it enables FSDP only on "
                "accelerators (GPUs) with several ranks, and otherwise silently trains without it. Remove `fsdp` "
                "(DDP and DeepSpeed ZeRO also run on CPU), or launch on GPUs: docs/online_merging_at_scale.md."
            )

    def _zero_stage(self) -> int:
        if not self.is_deepspeed_enabled:
            return 0
        return int(self.accelerator.state.deepspeed_plugin.zero_stage)

    def _fsdp_version(self) -> int:
        if not self.is_fsdp_enabled:
            return 0
        return 2 if self.accelerator.is_fsdp2 else 1

    def _sharded_layouts(self) -> dict[int, list[Segment]]:
        """Parameter slices of the flat partitions DeepSpeed's ZeRO optimizer hands to our optimizer."""
        zero_optimizer = self.model_wrapped.optimizer
        names = {id(param): name for name, param in self.model.named_parameters()}
        stage = self._zero_stage()
        if stage in (1, 2):
            return zero12_layouts(zero_optimizer, names)
        if stage == 3:
            return zero3_layouts(zero_optimizer, names)
        raise NotImplementedError(f"online merging under DeepSpeed supports ZeRO stages 1-3, not stage {stage}.")

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        if self.optimizer is None and self._task_vector_source is not None:
            # Under FSDP1 the Trainer passes the wrapped model (its parameters are the shards); FSDP2 swaps the
            # parameters for DTensors after this, which the optimizer reads itself.
            model = args[0] if args else kwargs.get("model") or self.model
            self.optimizer = OnlineMergingAdamW(
                self._named_parameter_groups(model),
                config=self.merge_config,
                task_vector_source=self._task_vector_source,
                lr=self.args.learning_rate,
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
                weight_decay=self.args.weight_decay,
            )
            if self.is_deepspeed_enabled:
                self.optimizer.set_layout_resolver(self._sharded_layouts)
            elif self.is_fsdp_enabled and not self.accelerator.is_fsdp2:
                self.optimizer.register_layouts(fsdp1_layouts(model))
        return super().create_optimizer(*args, **kwargs)

    def _named_parameter_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """Trainer's usual split (no decay for biases and norms), with the parameter names online merging needs."""
        decay_names = set(self.get_decay_parameter_names(model))
        groups = {
            True: {"params": [], "param_names": [], "weight_decay": self.args.weight_decay},
            False: {"params": [], "param_names": [], "weight_decay": 0.0},
        }
        for name, param in model.named_parameters():
            if param.requires_grad:
                group = groups[name in decay_names]
                group["params"].append(param)
                group["param_names"].append(name)
        return [group for group in groups.values() if group["params"]]

    def train(self, *args: Any, **kwargs: Any) -> Any:
        output = super().train(*args, **kwargs)
        if self.is_world_process_zero():
            self._write_merge_report()
        return output

    def _merging_optimizer(self) -> OnlineMergingAdamW | None:
        """Ours, under accelerate's and DeepSpeed's wrappers (each keeps the wrapped one as `.optimizer`)."""
        optimizer = self.optimizer
        while optimizer is not None and not isinstance(optimizer, OnlineMergingAdamW):
            optimizer = getattr(optimizer, "optimizer", None)
        return optimizer

    def _write_merge_report(self) -> None:
        optimizer = self._merging_optimizer()
        if optimizer is None:
            return
        merged = optimizer.merged_numel()
        tau_bytes = optimizer.persistent_merge_bytes()
        report = {
            "method": self.merge_config.method.value,
            "keep_prob": self.merge_config.keep_prob,
            "alpha": self.merge_config.alpha,
            "rescale": self.merge_config.rescale.value,
            "applied_rescale": self.merge_config.applied_rescale.value,
            "seed": self.merge_config.seed,
            "zero_stage": self._zero_stage(),
            "fsdp_version": self._fsdp_version(),
            "merged_elements_rank0": merged,
            "tau_bytes_rank0": tau_bytes,
            "tau_bytes_over_fp32_copy": tau_bytes / (4 * merged) if merged else 0.0,
        }
        atomic_write_text(Path(self.args.output_dir) / MERGE_REPORT_NAME, json.dumps(report, indent=2) + "\n")


# Importing this module first imports LLaMA-Factory's DPO trainer, whose patch (sfmed_lf.integration, when the plugin
# is active) installs the class above: it waited for it.
if (_integration := sys.modules.get("sfmed_lf.integration")) is not None:
    _integration.finish_deferred_patches(__name__)
