"""tau = theta_sft - theta_base, read from the two checkpoints one tensor at a time and stored sparsified.

Neither model is ever loaded whole: safetensors files are memory-mapped and read per tensor, so the transient cost
is a few copies of the largest single parameter, and nothing of either model stays alive once tau is built.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import safe_open

from sfmed_lf.merging.config import OnlineMergingConfig
from sfmed_lf.merging.layout import checkpoint_name
from sfmed_lf.merging.sparse_delta import SparseDelta
from sfmed_lf.merging.sparsify import sparsify

TAU_STREAM = "tau"
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_SAFETENSORS_SINGLE = "model.safetensors"
_TORCH_INDEX = "pytorch_model.bin.index.json"
_TORCH_SINGLE = "pytorch_model.bin"


class TaskVectorError(ValueError):
    """theta_sft and theta_base cannot give a task vector for this policy."""


def resolve_model_dir(name_or_path: str, role: str) -> Path:
    """A local directory, or a hub id resolved through the Hugging Face cache (offline when HF_HUB_OFFLINE=1)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise TaskVectorError(f"{role} model {name_or_path!r} is not a directory.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.json", "*.safetensors", "*.bin"]))
    except Exception as error:
        raise TaskVectorError(
            f"{role} model {name_or_path!r} is neither a local directory nor available from the Hugging Face "
            f"cache/hub ({type(error).__name__}: {error})."
        ) from error


class CheckpointReader:
    """Random access, one tensor at a time, to a Hugging Face checkpoint directory (safetensors or .bin)."""

    def __init__(self, name_or_path: str, role: str) -> None:
        self.role = role
        self.name_or_path = name_or_path
        self.directory = resolve_model_dir(name_or_path, role)
        self._open_files: dict[str, object] = {}
        self._file_of = self._index_tensors()

    def _index_tensors(self) -> dict[str, str]:
        for index_name in (_SAFETENSORS_INDEX, _TORCH_INDEX):
            index_path = self.directory / index_name
            if index_path.is_file():
                return dict(json.loads(index_path.read_text())["weight_map"])
        for single in (_SAFETENSORS_SINGLE, _TORCH_SINGLE):
            if (self.directory / single).is_file():
                return dict.fromkeys(self._open(single).keys(), single)
        raise TaskVectorError(
            f"{self.role} model {self.name_or_path!r}: no {_SAFETENSORS_SINGLE}, {_SAFETENSORS_INDEX}, "
            f"{_TORCH_SINGLE} or {_TORCH_INDEX} in {self.directory}."
        )

    def _open(self, file_name: str):  # noqa: ANN202 - a safe_open handle or a mmap-loaded state dict
        if file_name not in self._open_files:
            file_path = os.fspath(self.directory / file_name)
            if file_name.endswith(".safetensors"):
                self._open_files[file_name] = safe_open(file_path, framework="pt", device="cpu")
            else:
                self._open_files[file_name] = torch.load(file_path, map_location="cpu", mmap=True, weights_only=True)
        return self._open_files[file_name]

    def __contains__(self, name: str) -> bool:
        return name in self._file_of

    def shape(self, name: str) -> tuple[int, ...]:
        handle = self._open(self._file_of[name])
        if isinstance(handle, dict):
            return tuple(handle[name].shape)
        return tuple(handle.get_slice(name).get_shape())

    def flat_slice(self, name: str, offset: int = 0, numel: int | None = None) -> torch.Tensor:
        """Elements [offset, offset + numel) of the flattened tensor, reading only the rows that hold them, so
        a rank that owns a shard of a parameter never reads the whole parameter."""
        handle = self._open(self._file_of[name])
        if isinstance(handle, dict):
            flat = handle[name].reshape(-1)
            return flat[offset : flat.numel() if numel is None else offset + numel]
        tensor_slice = handle.get_slice(name)
        shape = tensor_slice.get_shape()
        total = 1
        for dim in shape:
            total *= dim
        stop = total if numel is None else offset + numel
        if len(shape) < 2 or (offset == 0 and stop == total):
            return handle.get_tensor(name).reshape(-1)[offset:stop]
        row = total // shape[0]
        first_row, end_row = offset // row, -(-stop // row)
        rows = tensor_slice[first_row:end_row].reshape(-1)
        return rows[offset - first_row * row : stop - first_row * row]

    def close(self) -> None:
        self._open_files.clear()


class TaskVectorSource:
    """Builds sparsified slices of tau = theta_sft - theta_base on demand."""

    def __init__(self, sft_name_or_path: str, base_name_or_path: str) -> None:
        self.sft = CheckpointReader(sft_name_or_path, "SFT (theta_sft)")
        self.base = CheckpointReader(base_name_or_path, "base (theta_base)")

    def numel(self, parameter_name: str) -> int:
        """Elements of the parameter in theta_sft."""
        return math.prod(self.sft.shape(checkpoint_name(parameter_name)))

    def check_compatible(self, parameter_shapes: Mapping[str, Iterable[int]]) -> None:
        """Fail before training if a trainable parameter is missing from either checkpoint or has another shape."""
        problems = []
        for parameter_name, shape in parameter_shapes.items():
            name, expected = checkpoint_name(parameter_name), tuple(shape)
            for reader in (self.sft, self.base):
                if name not in reader:
                    problems.append(f"{name}: missing from the {reader.role} model {reader.name_or_path!r}")
                elif (found := reader.shape(name)) != expected:
                    problems.append(
                        f"{name}: shape {list(found)} in the {reader.role} model {reader.name_or_path!r}, "
                        f"the policy has {list(expected)}"
                    )
        if problems:
            shown = "\n  ".join(problems[:10])
            more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            raise TaskVectorError(
                f"online merging: theta_sft and theta_base must have the policy's parameters "
                f"({len(problems)} problems):\n  {shown}{more}"
            )

    def sparse_slice(
        self,
        parameter_name: str,
        config: OnlineMergingConfig,
        *,
        offset: int = 0,
        numel: int | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> SparseDelta:
        """Sparsified tau for flat elements [offset, offset + numel) of one parameter, stored compactly."""
        name = checkpoint_name(parameter_name)
        # copy=True: safetensors may hand out views of its memory map, which must never be written to.
        tau = self.sft.flat_slice(name, offset, numel).to(device=device, dtype=torch.float32, copy=True)
        tau.sub_(self.base.flat_slice(name, offset, numel).to(device=device, dtype=torch.float32))
        positions, values = sparsify(
            tau, config, name=name, stream=TAU_STREAM, offset=offset, param_numel=self.numel(name)
        )
        return SparseDelta.from_positions(tau.numel(), positions, values.to(dtype))

    def close(self) -> None:
        self.sft.close()
        self.base.close()
