"""tau = theta_sft - theta_base read from real checkpoint files: formats, sharding, and the errors users see."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sfmed_lf.merging.config import MergeMethod, OnlineMergingConfig
from sfmed_lf.merging.task_vector import TaskVectorError, TaskVectorSource, checkpoint_name

SHAPES = {"model.embed_tokens.weight": (50, 8), "model.layers.0.mlp.up_proj.weight": (16, 8), "model.norm.weight": (8,)}
DENSE = OnlineMergingConfig(MergeMethod.ONDARE, keep_prob=1.0, alpha=0.1)


def weights(seed: int, shapes=SHAPES) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def write_safetensors(directory, tensors, shards: int = 1):
    directory.mkdir(parents=True, exist_ok=True)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"))
        return directory
    names = sorted(tensors)
    weight_map = {}
    for shard in range(shards):
        file_name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[shard::shards]}
        save_file(part, str(directory / file_name))
        weight_map.update(dict.fromkeys(part, file_name))
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


@pytest.mark.parametrize("sft_format", ["single", "sharded", "bin"])
def test_dense_tau_is_the_difference_of_the_checkpoints(tmp_path, sft_format):
    sft, base = weights(1), weights(2)
    if sft_format == "bin":
        (tmp_path / "sft").mkdir()
        torch.save(sft, tmp_path / "sft" / "pytorch_model.bin")
    else:
        write_safetensors(tmp_path / "sft", sft, shards=3 if sft_format == "sharded" else 1)
    write_safetensors(tmp_path / "base", base)
    source = TaskVectorSource(str(tmp_path / "sft"), str(tmp_path / "base"))
    source.check_compatible({f"module.{n}": s for n, s in SHAPES.items()})
    for name in SHAPES:
        tau = source.sparse_slice(name, DENSE).to_dense()
        torch.testing.assert_close(tau, (sft[name] - base[name]).reshape(-1))
        middle = source.sparse_slice(name, DENSE, offset=3, numel=5).to_dense()
        torch.testing.assert_close(middle, (sft[name] - base[name]).reshape(-1)[3:8])


def test_shape_mismatch_and_missing_parameters_are_listed(tmp_path):
    write_safetensors(tmp_path / "sft", weights(1))
    other = dict(SHAPES, **{"model.embed_tokens.weight": (60, 8)})
    other.pop("model.norm.weight")
    write_safetensors(tmp_path / "base", weights(2, other))
    source = TaskVectorSource(str(tmp_path / "sft"), str(tmp_path / "base"))
    with pytest.raises(TaskVectorError) as error:
        source.check_compatible(SHAPES)
    message = str(error.value)
    assert "model.embed_tokens.weight: shape [60, 8] in the base (theta_base) model" in message
    assert "the policy has [50, 8]" in message
    assert "model.norm.weight: missing from the base (theta_base) model" in message
    assert "(2 problems)" in message


def test_unusable_paths_name_the_model(tmp_path):
    write_safetensors(tmp_path / "base", weights(2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskVectorError, match=r"SFT \(theta_sft\) model .*no model.safetensors"):
        TaskVectorSource(str(tmp_path / "empty"), str(tmp_path / "base"))
    with pytest.raises(TaskVectorError, match="not a directory"):
        TaskVectorSource(str(tmp_path / "base" / "model.safetensors"), str(tmp_path / "base"))
    with pytest.raises(TaskVectorError, match=r"neither a local directory nor available"):
        TaskVectorSource("no-such-org/no-such-model", str(tmp_path / "base"))


def test_wrapper_prefixes_are_stripped():
    assert checkpoint_name("module._orig_mod.model.norm.weight") == "model.norm.weight"


def test_flat_slices_read_only_the_needed_rows(tmp_path):
    sft = weights(1)
    write_safetensors(tmp_path / "sft", sft)
    write_safetensors(tmp_path / "base", weights(2))
    reader = TaskVectorSource(str(tmp_path / "sft"), str(tmp_path / "base")).sft
    name = "model.embed_tokens.weight"
    flat = sft[name].reshape(-1)
    reader.flat_slice(name, 0, 1)
    (file_name,) = reader._open_files
    whole_reads = []

    class CountingHandle:  # the safetensors handle, counting reads of whole tensors
        def __init__(self, handle):
            self.handle = handle

        def get_slice(self, tensor_name):
            return self.handle.get_slice(tensor_name)

        def get_tensor(self, tensor_name):
            whole_reads.append(tensor_name)
            return self.handle.get_tensor(tensor_name)

    reader._open_files[file_name] = CountingHandle(reader._open_files[file_name])
    for offset, numel in [(0, 8), (5, 3), (13, 100), (392, 8), (7, None), (1, None), (0, 399)]:
        expected = flat[offset:] if numel is None else flat[offset : offset + numel]
        assert torch.equal(reader.flat_slice(name, offset, numel), expected)
        assert whole_reads == [], (offset, numel)
    assert torch.equal(reader.flat_slice(name, 0, None), flat)  # the whole parameter: one read
    assert whole_reads == [name]


def test_closing_the_source_closes_both_checkpoints(tmp_path):
    write_safetensors(tmp_path / "sft", weights(1))
    write_safetensors(tmp_path / "base", weights(2))
    source = TaskVectorSource(str(tmp_path / "sft"), str(tmp_path / "base"))
    source.sparse_slice("model.norm.weight", DENSE)
    assert source.sft._open_files and source.base._open_files
    source.close()
    assert not source.sft._open_files and not source.base._open_files


def test_many_incompatible_parameters_are_listed_ten_at_a_time(tmp_path):
    write_safetensors(tmp_path / "sft", weights(1))
    write_safetensors(tmp_path / "base", weights(2))
    source = TaskVectorSource(str(tmp_path / "sft"), str(tmp_path / "base"))
    policy = {**SHAPES, **{f"model.extra.{i}.weight": (4,) for i in range(6)}}  # 6 missing from both: 12 problems
    with pytest.raises(TaskVectorError) as error:
        source.check_compatible(policy)
    message = str(error.value)
    assert "(12 problems)" in message and message.endswith("\n  ... and 2 more")
    assert message.count(": missing from the") == 10
    policy = {**SHAPES, **{f"model.extra.{i}.weight": (4,) for i in range(5)}}  # exactly 10: all shown
    with pytest.raises(TaskVectorError) as error:
        source.check_compatible(policy)
    assert "(10 problems)" in str(error.value) and "more" not in str(error.value)
    assert str(error.value).count(": missing from the") == 10
