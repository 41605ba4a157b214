"""The repository builder: valid configs of both flavours, versions, and a committed repository in sync."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc

from loopstream.client.shadow import agreement
from loopstream.serving.core_models import OnnxModel
from loopstream.serving.pipelines import Pipeline, PipelineSpec
from loopstream.serving.repository import (
    GPU_PIPELINE_INSTANCES,
    add_version,
    build_flavour,
    default_version,
    half_precision_network,
    main,
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
    assert [g.count for g in configs["loops_semantic"].instance_group] == [GPU_PIPELINE_INSTANCES]
    assert not list(out.glob("loops_semantic_core/*/model.py")), "native backend: no Python glue"
    for network in out.glob("loops_semantic_core/*/model.onnx"):  # float16 weights: half the file
        source = REPOSITORY / network.relative_to(out)
        assert network.stat().st_size < 0.55 * source.stat().st_size, network
    for glue in out.glob("loops_semantic/*/model.py"):
        assert not glue.is_symlink(), "a built repository must not point back into the source tree"


def test_half_precision_unet_finds_the_loops_of_the_float32_one(tmp_path: Path) -> None:
    """The GPU flavour's float16 U-Net against the float32 one on the real 512² tiles of the
    bundled held-out creme images, both in ONNX Runtime on the CPU, through the shipped pipeline."""
    version = str(default_version(REPOSITORY, "loops_semantic"))
    full = REPOSITORY / "loops_semantic_core" / version / "model.onnx"
    half = tmp_path / "model.onnx"
    half_precision_network(full, half)
    assert half.stat().st_size < 0.55 * full.stat().st_size
    graph = onnx.load(half).graph
    io_types = [t.type.tensor_type.elem_type for t in (*graph.input, *graph.output)]
    assert io_types == [onnx.TensorProto.FLOAT] * 2
    pipeline = Pipeline(PipelineSpec.read(REPOSITORY / "loops_semantic" / version / "pipeline.json"))
    runs = OnnxModel(full).run, OnnxModel(half).run
    matched = counted = 0
    for sample in sorted((REPOSITORY.parent / "loopstream" / "data" / "samples").glob("*.png")):
        tile = np.asarray(Image.open(sample).convert("L"))
        match = agreement(*(pipeline.analyse(tile, run) for run in runs))
        matched, counted = matched + match.matched, counted + match.session_count + match.candidate_count
    assert counted >= 30
    assert 2 * matched / counted >= 0.99, f"{matched} matched of {counted} loops"


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


def test_a_version_with_another_versions_network_links_to_it_and_builds_to_a_copy(tmp_path: Path) -> None:
    first, second = sorted(REPOSITORY.glob("loops_semantic_core/*/model.onnx"))[:2]
    assert not filecmp.cmp(first, second, shallow=False), "the test needs two different networks"
    repository = tmp_path / "repository"
    add_version(repository, "loops_x", PipelineSpec(threshold=0.4), first)
    add_version(repository, "loops_x", PipelineSpec(threshold=0.6), first)  # post-processing only
    core = repository / "loops_x_core"
    linked = core / "2" / "model.onnx"
    assert linked.is_symlink() and linked.resolve() == (core / "1" / "model.onnx").resolve()
    built = build_flavour(repository, tmp_path / "local", "local") / "loops_x_core" / "2" / "model.onnx"
    assert not built.is_symlink() and filecmp.cmp(built, first, shallow=False)
    add_version(repository, "loops_x", PipelineSpec(threshold=0.4), second, version=1)  # replace 1
    assert not linked.is_symlink() and filecmp.cmp(linked, first, shallow=False), "2 keeps its network"
    assert filecmp.cmp(core / "1" / "model.onnx", second, shallow=False)
    add_version(repository, "loops_x", PipelineSpec(threshold=0.4), second, version=2)  # replace 2
    assert linked.is_symlink() and filecmp.cmp(linked, second, shallow=False)


def test_the_shipped_repository_holds_each_network_once() -> None:
    networks = [p for p in REPOSITORY.glob("*_core/*/model.*") if p.suffix in (".onnx", ".pt")]
    real = [p for p in networks if not p.is_symlink()]
    assert all(p.resolve() in {r.resolve() for r in real} for p in networks), "a link points elsewhere"
    for i, a in enumerate(real):
        for b in real[i + 1 :]:
            assert not filecmp.cmp(a, b, shallow=False), f"{a} and {b} are copies: link one to the other"


def _torchscript_repository(tmp_path: Path) -> Path:
    """Both families with a (stand-in) TorchScript file: configs depend on the format, not the bytes."""
    repository = tmp_path / "repository"
    network = tmp_path / "model.pt"
    network.write_bytes(b"stand-in: configs are written from the spec and the file type")
    add_version(repository, "loops_semantic_ts", PipelineSpec(family="semantic"), network)
    add_version(repository, "loops_instance_ts", PipelineSpec(family="instance", threshold=0.8), network)
    return repository


def test_torchscript_cores_batch_with_positional_names_in_both_flavours(tmp_path: Path) -> None:
    repository = _torchscript_repository(tmp_path)
    assert (
        PipelineSpec.read(repository / "loops_instance_ts" / "1" / "pipeline.json").core_format
        == "torchscript"
    )
    assert (repository / "loops_instance_ts_core" / "1" / "model.pt").exists()
    for flavour, configs in (
        ("local", _configs(repository)),
        ("gpu", _configs(build_flavour(repository, tmp_path / "gpu", "gpu"))),
    ):
        for core in ("loops_semantic_ts_core", "loops_instance_ts_core"):
            config = configs[core]
            assert [i.name for i in config.input] == ["INPUT__0"], flavour
            assert config.max_batch_size > 1 and config.HasField("dynamic_batching"), (flavour, core)
            if flavour == "gpu":
                assert config.platform == "pytorch_libtorch" and not config.backend
                assert not config.optimization.execution_accelerators.gpu_execution_accelerator
            else:
                assert config.backend == "python"
        outputs = {o.name: o for o in configs["loops_instance_ts_core"].output}
        assert sorted(outputs) == ["OUTPUT__0", "OUTPUT__1", "OUTPUT__2", "OUTPUT__3"]
        counts = outputs["OUTPUT__3"]
        assert counts.data_type == mc.TYPE_INT64 and counts.HasField("reshape") and not counts.reshape.shape
    assert (tmp_path / "gpu" / "loops_instance_ts_core" / "1" / "model.pt").exists()


def test_a_pipeline_rejects_a_second_core_format_and_stays_as_it_was(tmp_path: Path) -> None:
    repository = _torchscript_repository(tmp_path)
    before = (repository / "loops_semantic_ts_core" / "config.pbtxt").read_text()
    onnx = next(REPOSITORY.glob("loops_semantic_core/*/model.onnx"))
    with pytest.raises(ValueError, match=r"mix core formats.*pipeline of its own"):
        add_version(repository, "loops_semantic_ts", PipelineSpec(family="semantic"), onnx)
    assert versions_of(repository, "loops_semantic_ts") == [1]
    assert (repository / "loops_semantic_ts_core" / "config.pbtxt").read_text() == before
    (tmp_path / "model.pth").write_bytes(b"a pickled state dict is not an exported network")
    with pytest.raises(
        ValueError, match=r"unknown network file type '\.pth'.*ONNX \(\.onnx\) or TorchScript"
    ):
        add_version(repository, "loops_other", PipelineSpec(), tmp_path / "model.pth")


def test_cli_says_what_is_wrong_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "spec.json").write_text('{"family": "instance"}')
    argv = ["--repository", str(tmp_path / "repository"), "add", "--spec", str(tmp_path / "spec.json")]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--network", str(tmp_path / "missing.onnx")])
    assert exit_info.value.code == 2
    assert "missing.onnx: no such network file; export one" in capsys.readouterr().err
    assert not (tmp_path / "repository").exists(), "a failed add must leave nothing behind"
