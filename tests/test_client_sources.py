"""Frame sources read real files, written here with each format's own library."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from loopstream.client.sources import DirectorySource, SourceError


def _frames(n: int, dtype: str = "uint16") -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, (48, 64)).astype(dtype) for _ in range(n)]


def test_directory_of_png_and_tiff_stack_in_name_order(tmp_path: Path) -> None:
    png, stack = _frames(1, "uint8"), _frames(3)
    cv2.imwrite(str(tmp_path / "a.png"), png[0])
    tifffile.imwrite(tmp_path / "b.tif", np.stack(stack))
    frames = list(DirectorySource(tmp_path, frame_interval_s=0.5))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.timestamp_s for f in frames] == [0.0, 0.5, 1.0, 1.5]
    np.testing.assert_array_equal(frames[0].image, png[0])
    for frame, expected in zip(frames[1:], stack, strict=True):
        assert frame.image.dtype == np.uint16
        np.testing.assert_array_equal(frame.image, expected)
    assert frames[2].origin.endswith("b.tif[1]")


def test_truncated_file_names_the_file_or_is_skipped_on_request(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _frames(1)[0])
    data = (tmp_path / "a.tif").read_bytes()
    (tmp_path / "b.tif").write_bytes(data[: len(data) // 2])
    tifffile.imwrite(tmp_path / "c.tif", _frames(1)[0])
    with pytest.raises(SourceError, match=r"b\.tif"):
        list(DirectorySource(tmp_path))
    source = DirectorySource(tmp_path, on_error="skip")
    assert len(list(source)) == 2
    assert len(source.skipped) == 1 and "b.tif" in source.skipped[0]


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no \.png"):
        DirectorySource(tmp_path)
    with pytest.raises(SourceError, match="not a directory"):
        DirectorySource(tmp_path / "missing")
