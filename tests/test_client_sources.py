"""Frame sources read real files, written here with each format's own library."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import cv2
import h5py
import imageio.v3 as iio
import mrcfile
import numpy as np
import pytest
import tifffile
from rsciio import emd

from loopstream.client.cli import build_parser, make_source
from loopstream.client.sources import DirectorySource, InSituSource, SourceError, open_source
from tests.conftest import SHEN_FRAMES


def _frames(n: int, dtype: str = "uint16") -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 200, (48, 64)).astype(dtype) for _ in range(n)]


def test_directory_of_png_and_tiff_stack_in_name_order(tmp_path: Path) -> None:
    png, stack = _frames(1, "uint8"), _frames(3)
    cv2.imwrite(str(tmp_path / "a.png"), png[0])
    tifffile.imwrite(tmp_path / "b.tif", np.stack(stack), photometric="minisblack")
    frames = list(DirectorySource(tmp_path, frame_interval_s=0.5))
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert [f.timestamp_s for f in frames] == [0.0, 0.5, 1.0, 1.5]
    np.testing.assert_array_equal(frames[0].image, png[0])
    for frame, expected in zip(frames[1:], stack, strict=True):
        assert frame.image.dtype == np.uint16
        np.testing.assert_array_equal(frame.image, expected)
    assert frames[2].origin.endswith("b.tif[1]")


def test_folder_of_jpeg_png_tiff_frames_in_numeric_order_with_interval_and_pixel_size_from_flags(
    tmp_path: Path,
) -> None:
    """Unpadded frame numbers (frame2 before frame10), mixed formats, timing and scale from the flags."""
    images = _frames(12, "uint8")
    for number, image in enumerate(images):  # written in an order unlike the numeric one
        suffix = (".jpg", ".png", ".tif")[number % 3]
        path = tmp_path / f"frame{number}{suffix}"
        if suffix == ".tif":
            tifffile.imwrite(path, image)
        else:
            cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    args = build_parser().parse_args(
        ["files", str(tmp_path), "--frame-interval-s", "0.25", "--pixel-size-nm", "1.5"]
    )
    frames, total, pixel_size_nm, frame_rate_hz = make_source(args)
    frames = list(frames)
    assert total == 12 and pixel_size_nm == 1.5 and frame_rate_hz == 4.0
    assert [Path(f.origin).stem for f in frames] == [f"frame{n}" for n in range(12)]
    assert [f.timestamp_s for f in frames] == [0.25 * n for n in range(12)]
    for frame, image in zip(frames, images, strict=True):
        assert frame.image.dtype == np.uint8 and frame.image.shape == image.shape
        tolerance = 3 if frame.origin.endswith(".jpg") else 0  # JPEG is lossy even at quality 100
        assert np.abs(frame.image.astype(int) - image).max() <= tolerance


def test_folder_without_pixel_size_asks_for_the_flag(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "frame1.jpg"), _frames(1, "uint8")[0])
    with pytest.raises(SourceError, match="--pixel-size-nm"):
        make_source(build_parser().parse_args(["files", str(tmp_path)]))


@pytest.mark.skipif(not SHEN_FRAMES.is_dir(), reason=f"no shen2021-fecral video at {SHEN_FRAMES}")
def test_real_insitu_video_folder_reads_in_frame_order() -> None:
    """The real FeCrAl video (read only, never copied): 1120 x 710 greyscale JPEGs, frame0000 first."""
    source = open_source(SHEN_FRAMES, frame_interval_s=0.5)
    assert len(source) >= 400
    first = next(iter(source))
    assert first.image.shape == (710, 1120) and first.image.dtype == np.uint8
    assert Path(first.origin).name == "frame0000.jpg" and first.timestamp_s == 0.0


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


# --- Microscope formats ------------------------------------------------------------------------------
# Each fixture is written with the format's own library; DM3/DM4 have no writer anywhere, so
# _write_dm below follows Gatan's documented tag-file layout with only the tags a reader needs.

_DM_TAG_TYPES = {"int16": 2, "int32": 3, "uint16": 4, "float32": 6, "float64": 7, "uint8": 10}
_DM_IMAGE_TYPES = {"int16": 1, "float32": 2, "uint8": 6, "int32": 7, "uint16": 10, "float64": 12}


def _dm_tag(name: str, value: object, version: int) -> bytes:
    """One tag: a group (dict: named tags, list: unnamed ones) or data (scalar, 1-D array, str)."""
    count = ">Q" if version == 4 else ">I"  # DM4 widened every count and size to 64 bits
    if isinstance(value, dict | list):
        items = list(value.items()) if isinstance(value, dict) else [("", v) for v in value]
        body = b"\0\1" + struct.pack(count, len(items)) + b"".join(_dm_tag(k, v, version) for k, v in items)
        tag_id = 20
    else:
        data = (
            np.frombuffer(value.encode("utf-16-le"), "<u2") if isinstance(value, str) else np.asarray(value)
        )
        code = _DM_TAG_TYPES[data.dtype.name]
        info = [code] if data.ndim == 0 else [20, code, data.size]  # simple value, or array of them
        body = b"%%%%" + struct.pack(f">{len(info) + 1}{count[1]}", len(info), *info)
        body += data.astype(data.dtype.newbyteorder("<")).tobytes()
        tag_id = 21
    size = struct.pack(count, len(body)) if version == 4 else b""
    return struct.pack(">bH", tag_id, len(name)) + name.encode() + size + body


def _write_dm(path: Path, image: np.ndarray, pixel_size_nm: float, filetime: float | None = None) -> None:
    """A minimal DM3 (.dm3) or DM4 (.dm4) file: header, then ImageList/ImageData with calibration."""
    version = 4 if path.suffix == ".dm4" else 3
    tags = {
        "ImageList": [
            {
                "ImageData": {
                    "Calibrations": {
                        "Dimension": [
                            {"Origin": np.float32(0), "Scale": np.float32(pixel_size_nm), "Units": "nm"}
                        ]
                        * 2
                    },
                    "Data": image.ravel(),
                    "DataType": np.int32(_DM_IMAGE_TYPES[image.dtype.name]),
                    "Dimensions": [np.int32(n) for n in image.shape[::-1]],  # x, y, z
                    "PixelDepth": np.int32(image.dtype.itemsize),
                },
                "ImageTags": {} if filetime is None else {"DataBar": {"Acquisition Time (OS)": filetime}},
            }
        ]
    }
    count = ">Q" if version == 4 else ">I"
    root = b"\0\1" + struct.pack(count, len(tags)) + b"".join(_dm_tag(k, v, version) for k, v in tags.items())
    path.write_bytes(struct.pack(f">I{count[1]}I", version, len(root) + 8, 1) + root)  # 1: little-endian data


def _write_velox(path: Path, stack: np.ndarray, pixel_size_nm: float, frame_time_s: float) -> None:
    """A Velox EMD image stack (HDF5): Version, Data/Image/<id>/Data (y, x, frame) and its JSON Metadata."""
    metadata = {
        "BinaryResult": {
            "PixelSize": {"width": str(pixel_size_nm * 1e-9), "height": str(pixel_size_nm * 1e-9)},
            "PixelUnitX": "m",
            "PixelUnitY": "m",
            "DetectorIndex": "0",
        },
        "Detectors": {"Detector-0": {"DetectorName": "BM-Ceta", "ExposureTime": str(frame_time_s)}},
        "Scan": {},
        "Acquisition": {"AcquisitionStartDatetime": {"DateTime": "1700000000"}},
    }
    with h5py.File(path, "w") as f:
        f["Version"] = np.array([json.dumps({"format": "Velox", "version": "11"}).encode()])
        image = f.create_group("Data/Image/6d1c3e0f2b5a4e7c9f8a0b1c2d3e4f50")
        image["Data"] = np.moveaxis(stack, 0, -1)
        image["Metadata"] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)[:, None]


def _write_mrc(path: Path, stack: np.ndarray, pixel_size_nm: float) -> None:
    with mrcfile.new(path) as mrc:
        mrc.set_data(stack)
        mrc.voxel_size = pixel_size_nm * 10  # MRC stores Å


def _write_format(path: Path, stack: np.ndarray) -> None:
    """``stack`` in the format of ``path``'s suffix, with pixel size 0.25 nm and 50 ms frames."""
    if path.suffix in (".dm3", ".dm4"):
        _write_dm(path, stack, 0.25)
    elif path.suffix == ".emd":
        _write_velox(path, stack, 0.25, 0.05)
    elif path.suffix == ".mrc":
        _write_mrc(path, stack, 0.25)
    elif path.suffix == ".avi":  # FFV1 is lossless, so grey values round-trip exactly
        iio.imwrite(
            path, stack, plugin="pyav", codec="ffv1", fps=20, in_pixel_format="gray", out_pixel_format="gray"
        )
    elif path.suffix == ".mp4":
        iio.imwrite(path, stack, plugin="pyav", codec="libx264", fps=20, in_pixel_format="gray")
    else:
        tifffile.imwrite(path, stack, photometric="minisblack")


@pytest.mark.parametrize(
    ("name", "dtype", "timestamps"),
    [
        ("a.dm3", "int16", [0.0, 0.5, 1.0]),  # no time axis in the file: index x interval
        ("a.dm4", "float32", [0.0, 0.5, 1.0]),
        ("a.emd", "uint16", [0.0, 0.05, 0.1]),  # Velox records the frame time
        ("a.mrc", "uint16", [0.0, 0.5, 1.0]),
    ],
)
def test_microscope_stack_round_trips_values_dtype_and_pixel_size(
    tmp_path: Path, name: str, dtype: str, timestamps: list[float]
) -> None:
    low = 0 if np.dtype(dtype).kind == "u" else -1000  # both bytes and the sign must survive
    stack = np.random.default_rng(1).integers(low, 30000, (3, 48, 64)).astype(dtype)
    _write_format(tmp_path / name, stack)
    frames = list(open_source(tmp_path / name, frame_interval_s=0.5))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.timestamp_s for f in frames] == pytest.approx(timestamps)
    for frame, expected in zip(frames, stack, strict=True):
        assert frame.image.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(frame.image, expected)
        assert frame.pixel_size_nm == pytest.approx(0.25)
    assert frames[1].origin == f"{tmp_path / name}[1]"


def test_berkeley_emd_written_by_rosettasciio_round_trips_with_its_time_axis(tmp_path: Path) -> None:
    stack = np.stack(_frames(3, "int32"))
    axes = [
        {"name": name, "size": size, "scale": scale, "offset": 0.0, "units": units, "navigate": False}
        for name, size, scale, units in [("t", 3, 50.0, "ms"), ("y", 48, 2.5, "Å"), ("x", 64, 2.5, "Å")]
    ]
    emd.file_writer(
        str(tmp_path / "a.emd"),
        {
            "data": stack,
            "axes": axes,
            "metadata": {"General": {"title": "a"}, "Signal": {}},
            "original_metadata": {},
        },
    )
    frames = list(open_source(tmp_path / "a.emd"))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.05, 0.1])
    assert all(f.pixel_size_nm == pytest.approx(0.25) and f.image.dtype == np.int32 for f in frames)
    np.testing.assert_array_equal(np.stack([f.image for f in frames]), stack)


def test_video_frames_are_greyscale_uint8_timed_by_frame_rate(tmp_path: Path) -> None:
    stack = np.stack(_frames(4, "uint8"))
    _write_format(tmp_path / "a.avi", stack)
    frames = list(open_source(tmp_path / "a.avi"))
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.05, 0.1, 0.15])
    for frame, expected in zip(frames, stack, strict=True):
        assert frame.image.dtype == np.uint8 and frame.pixel_size_nm is None
        np.testing.assert_array_equal(frame.image, expected)
    flat = np.stack([np.full((48, 64), v, np.uint8) for v in (0, 60, 128, 255)])
    iio.imwrite(tmp_path / "b.mp4", np.repeat(flat[..., None], 3, -1), plugin="pyav", codec="libx264", fps=20)
    grey = np.stack([f.image for f in open_source(tmp_path / "b.mp4")])
    assert grey.shape == flat.shape and np.abs(grey.astype(int) - flat).max() <= 2  # H.264 is lossy


@pytest.mark.parametrize("name", ["a.dm3", "a.dm4", "a.emd", "a.mrc", "a.avi", "a.mp4", "a.tif"])
def test_truncated_file_of_every_format_names_the_file(tmp_path: Path, name: str) -> None:
    whole = tmp_path / f"whole{Path(name).suffix}"
    _write_format(whole, np.stack(_frames(3, "uint8")))
    data = whole.read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceError, match=re.escape(str(tmp_path / name))):
        list(open_source(tmp_path / name))
    source = open_source(tmp_path / name, on_error="skip")
    list(source)
    assert len(source.skipped) == 1 and name in source.skipped[0]


def test_avi_cut_at_a_frame_boundary_is_caught_by_its_declared_frame_count(tmp_path: Path) -> None:
    _write_format(tmp_path / "whole.avi", np.stack(_frames(3, "uint8")))
    data = (tmp_path / "whole.avi").read_bytes()
    last_frame = data[: data.index(b"idx1")].rindex(b"00dc")  # the chunk of frame 3, before the index
    (tmp_path / "a.avi").write_bytes(data[:last_frame])  # decodes cleanly: frames 1 and 2
    with pytest.raises(SourceError, match=r"a\.avi ends after 2 of its 3 frames"):
        list(open_source(tmp_path / "a.avi"))


def _write_insitu(root: Path, values: list[int], dtype: str = "uint16") -> list[Path]:
    """Frames 0.1 s apart, spread over seconds and minutes; names sort wrongly as plain text."""
    layout = ["Second_09/Frame_2", "Second_09/Frame_10", "Second_10/Frame_1", "Second_59/Frame_1"]
    layout = [f"Minute_00/{p}" for p in layout] + ["Minute_01/Second_00/Frame_1"]
    paths = []
    for k, value in enumerate(values):
        path = root / "Hour_00" / f"{layout[k]}.dm4"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_dm(path, np.full((8, 8), value, dtype), 0.5, filetime=1.33e17 + k * 1e6)  # FILETIME: 100 ns
        paths.append(path)
    return paths


def test_insitu_tree_in_hour_minute_second_order_with_file_times(tmp_path: Path) -> None:
    _write_insitu(tmp_path, [10, 11, 12, 13, 14])
    source = open_source(tmp_path)
    assert isinstance(source, InSituSource)
    frames = list(source)
    assert [int(f.image[0, 0]) for f in frames] == [10, 11, 12, 13, 14]
    # a FILETIME double near 1.3e17 ticks resolves 16 ticks (1.6 us): that is the files' own precision
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-5)
    assert all(f.pixel_size_nm == 0.5 and f.image.dtype == np.uint16 for f in frames)


def test_integration_averages_in_the_camera_dtype_without_overflow(tmp_path: Path) -> None:
    _write_insitu(tmp_path, [65535, 65535, 65534, 65531, 7])
    averaged = list(open_source(tmp_path, integrate=2))
    assert [f.index for f in averaged] == [0, 1, 2]  # the odd last frame is kept, integrated alone
    assert all(f.image.dtype == np.uint16 for f in averaged)
    assert [int(f.image[0, 0]) for f in averaged] == [65535, 65532, 7]  # 65532.5 rounds to even
    assert [f.timestamp_s for f in averaged] == pytest.approx([0.0, 0.2, 0.4], abs=1e-5)
    assert averaged[0].origin.endswith("(2 frames)") and averaged[0].pixel_size_nm == 0.5


def test_insitu_tree_skips_a_corrupt_frame_on_request(tmp_path: Path) -> None:
    paths = _write_insitu(tmp_path, [10, 11, 12])
    paths[1].write_bytes(paths[1].read_bytes()[:100])
    with pytest.raises(SourceError, match=re.escape(str(paths[1]))):
        list(open_source(tmp_path))
    source = open_source(tmp_path, on_error="skip", integrate=2)
    assert [int(f.image[0, 0]) for f in source] == [(10 + 12) // 2]
    assert len(source.skipped) == 1 and "Frame_10.dm4" in source.skipped[0]


def test_open_source_picks_folder_or_file_and_rejects_unknown_formats(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _frames(1, "uint8")[0])
    _write_dm(tmp_path / "b.dm4", _frames(1)[0], 0.25)
    frames = list(open_source(tmp_path))
    assert isinstance(open_source(tmp_path), DirectorySource)
    assert [f.pixel_size_nm for f in frames] == [None, 0.25]
    (tmp_path / "c.ser").write_bytes(b"\0" * 16)
    with pytest.raises(SourceError, match=r"c\.ser.*unsupported.*\.dm4.*\.mrc.*\.mp4"):
        open_source(tmp_path / "c.ser")
    with pytest.raises(SourceError, match="does not exist"):
        open_source(tmp_path / "missing.dm4")
