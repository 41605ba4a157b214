"""The repository builder: valid configs of both flavours, versions, and a committed repository in sync."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from loopstream.serving.pipelines import PipelineSpec
from loopstream.serving.repository import (
    add_version,
    build_flavour,
    versions_of,
    write_configs,
)
from loopstream.serving.triton import REPOSITORY


def _parse(path: Path) -> mc.ModelConfig:
    """Parse strictly: a misspelt field or enum fails here, as it would fail Triton at load."""
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _configs(repository: Path) -> dict[str, mc.ModelConfig]:
    return {path.parent.name: _parse(path) for path in repository.glob("*/config.pbtxt")}


def test_committed_repository_is_what_the_builder_writes(tmp_path: Path) -> None:
    copy = tmp_path / "repository"
    shutil.copytree(REPOSITORY, copy, symlinks=True)
    write_configs(copy, "local")
    for config in REPOSITORY.glob("*/config.pbtxt"):
        assert filecmp.cmp(config, copy / config.relative_to(REPOSITORY), shallow=False), (
            f"{config} is stale: run loopstream-repository refresh"
        )
    for glue in REPOSITORY.glob("*/*/model.py"):
        assert glue.is_symlink() and glue.resolve().exists(), (
            f"{glue} must link to loopstream/serving/backends"
        )


def test_every_local_config_parses_and_is_served_by_the_python_backend() -> None:
    configs = _configs(REPOSITORY)
    assert {"loops_semantic", "loops_semantic_core"} <= set(configs)
    for name, config in configs.items():
        assert config.name == name and config.backend == "python"
    core = configs["loops_semantic_core"]
    assert core.max_batch_size > 1 and core.HasField("dynamic_batching")
    assert len(core.model_warmup) == 1
    assert list(core.version_policy.specific.versions) == versions_of(REPOSITORY, "loops_semantic")


def test_gpu_flavour_uses_onnxruntime_with_tensorrt_fp16_on_gpu_instances(tmp_path: Path) -> None:
    out = build_flavour(REPOSITORY, tmp_path / "gpu", "gpu")
    configs = _configs(out)
    core = configs["loops_semantic_core"]
    assert core.backend == "onnxruntime"
    assert [g.kind for g in core.instance_group] == [mc.ModelInstanceGroup.KIND_GPU]
    (trt,) = core.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    assert core.optimization.input_pinned_memory.enable and core.optimization.output_pinned_memory.enable
    assert configs["loops_semantic"].backend == "python"
    assert not list(out.glob("loops_semantic_core/*/model.py")), "native backend: no Python glue"
    for glue in out.glob("loops_semantic/*/model.py"):
        assert not glue.is_symlink(), "a built repository must not point back into the source tree"


def test_a_typo_in_a_config_fails_to_parse(tmp_path: Path) -> None:
    bad = tmp_path / "config.pbtxt"
    bad.write_text(
        (REPOSITORY / "loops_semantic_core" / "config.pbtxt").read_text().replace("KIND_CPU", "KIND_CPUS")
    )
    with pytest.raises(text_format.ParseError):
        _parse(bad)


def test_add_version_numbers_versions_and_rejects_unknown_settings(tmp_path: Path) -> None:
    onnx = next(REPOSITORY.glob("loops_semantic_core/*/model.onnx"))
    repository = tmp_path / "repository"
    assert add_version(repository, "loops_x", PipelineSpec(threshold=0.4), onnx) == 1
    assert add_version(repository, "loops_x", PipelineSpec(threshold=0.6), onnx) == 2
    assert versions_of(repository, "loops_x") == [1, 2]
    assert PipelineSpec.read(repository / "loops_x" / "2" / "pipeline.json").threshold == 0.6
    assert list(_configs(repository)["loops_x_core"].version_policy.specific.versions) == [1, 2]
    (tmp_path / "bad.json").write_text('{"treshold": 0.5}')
    with pytest.raises(ValueError, match="treshold"):
        PipelineSpec.read(tmp_path / "bad.json")
