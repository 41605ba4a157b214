"""Evaluation runs the served prediction path and survives real annotations.

- The evaluation CLI's detections for a real image are what tritonserver returns for it, loop
  for loop, for both families (one prediction path: ``Pipeline`` with the version's spec).
- Degenerate annotations (a collinear outline, fewer than 5 points, outside the image) are
  handled by the stated rule (``loopstream.models.scoring``) and counted, never a crash or an
  axis longer than the loop.
- Matching by mask IoU and by ellipse IoU, per image and pooled.
"""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as triton

from loopstream.core.detections import LOOP_COLUMNS
from loopstream.core.ellipses import ellipse_of_contour
from loopstream.core.masks import MaskCrop
from loopstream.dev.stack import LocalStack
from loopstream.models import evaluate
from loopstream.models.datasets import CocoLoops
from loopstream.models.scoring import Prediction, TruthImage, loops_of_masks, score_predictions
from loopstream.serving import repository
from loopstream.serving.spec import PipelineSpec
from loopstream.serving.triton import REPOSITORY
from tests.conftest import CREME, CREME_IMAGE, default_version

needs_creme = pytest.mark.skipif(not CREME.exists(), reason=f"no creme-ds25s data at {CREME}")
PIPELINES = ("loops_instance", "loops_semantic", "loops_instance_ti")  # the last with a zoom


@pytest.fixture(scope="module")
def defaults_stack(tmp_path_factory: pytest.TempPathFactory):
    """tritonserver serving only the default version of each pipeline, as shipped (a copy of
    the shipped repository's default versions: fewer models to load on a shared CPU)."""
    root = tmp_path_factory.mktemp("defaults")
    for pipeline in PIPELINES:
        version = default_version(pipeline)
        spec = PipelineSpec.read(REPOSITORY / pipeline / version / "pipeline.json")
        network = REPOSITORY / f"{pipeline}_core" / version / "model.onnx"
        repository.add_version(root / "repository", pipeline, spec, network, int(version))
    with LocalStack(root, repository=root / "repository") as running:
        yield running


@needs_creme
@pytest.mark.parametrize("pipeline", PIPELINES)
def test_evaluation_detections_are_tritons_loop_for_loop(
    defaults_stack: LocalStack, tmp_path, pipeline: str
) -> None:
    version = REPOSITORY / pipeline / default_version(pipeline)
    argv = ["--pipeline", str(version), "--coco", str(CREME), "--ids", "3", "--threads", "1"]
    evaluate.main([*argv, "--out", str(tmp_path)])
    evaluated = pd.read_csv(tmp_path / "loops" / "3.csv", index_col="loop")
    image = cv2.imread(str(CREME_IMAGE), cv2.IMREAD_GRAYSCALE)
    with triton.InferenceServerClient(defaults_stack.triton_url) as client:
        tensor = triton.InferInput("FRAME_U8", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image)
        served = client.infer(pipeline, [tensor]).as_numpy("DETECTIONS")
    assert list(evaluated.columns) == LOOP_COLUMNS
    assert len(served) > 0 and len(evaluated) == len(served)
    np.testing.assert_allclose(evaluated.to_numpy(np.float32), served, rtol=1e-4, atol=1e-3)


def _coco_with_degenerate_outlines(tmp_path) -> tuple[CocoLoops, list[int]]:
    """creme image 3 with three good loops and four bad outlines of the kinds real data holds."""
    (tmp_path / "imgs").mkdir()
    shutil.copy(CREME_IMAGE, tmp_path / "imgs" / "3.png")

    def ellipse(cx: float, cy: float, a: float, b: float) -> list[float]:
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1).ravel().round(2).tolist()

    polygons = [
        ellipse(100, 100, 15, 9),
        ellipse(300, 200, 20, 12),
        ellipse(400, 400, 10, 10),
        [50.0, 300.0, 51.0, 300.0, 52.0, 300.0, 53.0, 300.0, 54.0, 300.0],  # 5 collinear points
        [200.0, 50.0, 201.5, 50.5, 200.5, 51.5],  # a 3-point sliver
        [600.0, 600.0, 610.0, 600.0, 605.0, 610.0],  # outside the image: no pixel
        [250.0, 450.0, 252.0, 452.0],  # 2 points: no area
    ]
    anns = [
        dict(id=i + 1, image_id=3, category_id=1, iscrowd=0, segmentation=[p], area=1.0, bbox=[0, 0, 1, 1])
        for i, p in enumerate(polygons)
    ]
    data = dict(
        images=[dict(id=3, file_name="3.png", width=512, height=512)],
        annotations=anns,
        categories=[dict(id=1, name="loop")],
    )
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    return CocoLoops(tmp_path / "annotations.json"), [3]


@needs_creme
def test_degenerate_annotations_are_counted_and_never_get_absurd_axes(tmp_path) -> None:
    coco, ids = _coco_with_degenerate_outlines(tmp_path)
    (truth,) = evaluate.coco_truth(coco, ids)
    assert truth.dropped == 1 and len(truth.masks) == 6  # only the one outside the image is dropped
    extents = [np.hypot(*m.mask.shape) for m in truth.masks]
    assert np.isfinite(truth.loops[["major_px", "minor_px"]].to_numpy()).all()
    assert (truth.loops.major_px.to_numpy() <= 2 * np.array(extents) + 1).all()
    perfect = Prediction(truth.loops, truth.masks)
    table = score_predictions([truth], [perfect], pixel_nm=0.39)
    overall = table.iloc[-1]
    assert overall.gt_dropped == 1 and overall.gt_degenerate >= 3  # the lines, the sliver
    assert overall.F1 == 1.0 and overall.F1_ellipse == 1.0 and overall.N_re == 0.0


def test_tiny_masks_get_ellipses_no_longer_than_themselves() -> None:
    """Regions of 1-12 px, the sizes where fitEllipse returned NaN or axes of thousands of px."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        mask = (rng.random((4, 5)) < rng.uniform(0.2, 0.6)).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        for contour in contours:
            x, y, major, minor, _ = ellipse_of_contour(contour)
            assert np.isfinite([x, y, major, minor]).all()
            assert 1.0 <= minor <= major <= 2 * np.hypot(4, 5) + 1, contour.reshape(-1, 2).tolist()


def _disc(cx: int, cy: int, r: int, ring: bool = False) -> MaskCrop:
    mask = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    cv2.circle(mask, (r, r), r, 1, 1 if ring else -1)
    return MaskCrop(cx - r, cy - r, mask.astype(bool))


def test_matching_by_mask_and_by_ellipse_per_image_and_pooled() -> None:
    """An outline-only annotation (a ring) under a filled predicted disc: the masks barely overlap,
    the ellipses are the same; a loop found nowhere near counts in neither."""
    image = np.zeros((200, 200), np.uint8)
    rings = TruthImage("rings", image, [_disc(50, 50, 20, ring=True), _disc(150, 150, 15, ring=True)])
    discs = [_disc(50, 50, 20), _disc(100, 20, 8)]
    table = score_predictions([rings, rings], [Prediction(loops_of_masks(discs), discs)] * 2, pixel_nm=1.0)
    per_image, overall = table.iloc[0], table.iloc[-1]
    assert per_image.matched == 0 and per_image.matched_ellipse == 1
    assert per_image.F1_ellipse == pytest.approx(0.5)
    assert overall.N_gt == 4 and overall.matched_ellipse == 2 and overall.F1_ellipse == pytest.approx(0.5)


@needs_creme
def test_threshold_tuned_on_images_of_two_datasets_pooled(tmp_path, capsys) -> None:
    """``--tune-coco`` / ``--tune-ids`` pairs pool the tuning images of several datasets: the
    chosen threshold and sweep are those of all of them together, not of the first set."""
    other = tmp_path / "other"  # the same images under a second annotation file: a second dataset
    shutil.copytree(CREME.parent, other)
    version = REPOSITORY / "loops_semantic" / default_version("loops_semantic")
    argv = ["--pipeline", str(version), "--coco", str(CREME), "--ids", "1", "--threads", "1"]
    tuning = [
        "--tune-coco",
        str(CREME),
        "--tune-ids",
        "1",
        "--tune-coco",
        str(other / CREME.name),
        "--tune-ids",
        "2",
    ]
    evaluate.main([*argv, *tuning, "--out", str(tmp_path / "out")])
    assert "threshold chosen on images 1 + 2" in capsys.readouterr().out
    swept = pd.read_csv(tmp_path / "out" / "threshold_sweep.csv")

    pipeline, core = evaluate.open_pipeline(version, threads=1)
    images = evaluate.coco_truth(CocoLoops(CREME), [1, 2])
    run = evaluate.PipelineRun(pipeline, core, images, None)
    expected = evaluate.choose_threshold(images, run, evaluate.PIXEL_NM, evaluate.GRIDS["semantic"])[1]
    assert np.allclose(swept[["F1", "N_re", "P2"]], expected[["F1", "N_re", "P2"]], atol=1e-3, equal_nan=True)


def test_tune_ids_must_pair_with_tune_coco(capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(
            [
                "--pipeline",
                ".",
                "--coco",
                "a.json",
                "--tune-coco",
                "a.json",
                "--tune-ids",
                "1",
                "--tune-ids",
                "2",
            ]
        )
    assert "one --tune-ids per --tune-coco" in capsys.readouterr().err


@needs_creme
def test_mask_threshold_tuned_for_sizes_without_giving_up_f1(tmp_path, capsys) -> None:
    """``--tune-mask-grid`` picks, on the tuning images, the mask threshold of smallest |D_re|
    among those within 0.01 F1 of the best, and evaluates ``--ids`` with it."""
    version = REPOSITORY / "loops_instance" / default_version("loops_instance")
    argv = ["--pipeline", str(version), "--coco", str(CREME), "--ids", "1", "--threads", "1"]
    evaluate.main([*argv, "--tune-ids", "2", "--tune-mask-grid", "0.3,0.5,0.8", "--out", str(tmp_path)])
    table = pd.read_csv(tmp_path / "mask_threshold_sweep.csv")
    assert list(table.mask_threshold) == [0.3, 0.5, 0.8]
    assert table.D_re.iloc[0] > table.D_re.iloc[-1], "a higher mask threshold gives smaller loops"
    eligible = table[table.F1.max() - table.F1 <= evaluate.MASK_F1_TOLERANCE + 1e-4]
    chosen = eligible.loc[eligible.D_re.abs().idxmin()].mask_threshold
    out = capsys.readouterr().out
    assert f"mask threshold chosen on images 2: {chosen}" in out and f"mask threshold {chosen}" in out


def test_mask_grid_needs_tuning_images(capsys) -> None:
    with pytest.raises(SystemExit):
        evaluate.main(["--pipeline", ".", "--coco", "a.json", "--tune-mask-grid", "0.4,0.5"])
    assert "--tune-mask-grid chooses on the --tune-ids images" in capsys.readouterr().err
