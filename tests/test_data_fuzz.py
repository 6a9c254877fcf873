"""The NIfTI, PNG and JPEG readers fed random bytes, truncations and random header values (property-based).

Every input ends in a ``DataError`` naming the file or in a valid array: never another exception, a hang (the
deadline) or a multi-GB allocation (traced Python allocations for NIfTI; the process's peak memory for PIL's
decoders, whose C allocations the tracer does not see).
"""
from __future__ import annotations

import gzip
import io
import resource
import struct
import tracemalloc
import zlib
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from benchmark.data import DataError
from benchmark.data.brats import read_nifti
from benchmark.data.paired import read_image

FUZZ = settings(max_examples=80, deadline=timedelta(seconds=5), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MAX_TRACED = 256 * 2**20  # bytes of Python allocations one read may peak at
MAX_RSS_GROWTH_KB = 2 * 2**20  # 2 GiB over the whole fuzzing of PIL's readers


def _nifti_bytes() -> bytes:
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    return nib.Nifti1Image(data, np.diag([1.0, 1.5, 2.0, 1.0])).to_bytes()


NIFTI = _nifti_bytes()
# header fields worth damaging: dim[0..7], datatype, bitpix, vox_offset, scl_slope, scl_inter, sform codes
NIFTI_FIELDS = {"dim": (40, "<8h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "vox_offset": (108, "<f"),
                "scl_slope": (112, "<f"), "scl_inter": (116, "<f"), "sform_code": (254, "<h")}


def _png_bytes(mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (12, 9, 3) if mode == "RGB" else (12, 9),
                                                      dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


PNG_RGB, PNG_GRAY, JPEG = _png_bytes("RGB"), _png_bytes("L"), _jpeg_bytes()


def _read_nifti_bounded(path: Path) -> None:
    tracemalloc.start()
    try:
        data, affine = read_nifti(path)
        assert data.ndim == 3 and affine.shape == (4, 4)
    except DataError as err:
        assert str(path) in str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MAX_TRACED, f"{peak / 2**20:.0f} MiB allocated"


def _write(tmp_path: Path, name: str, raw: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(raw)
    return path


@FUZZ
@given(raw=st.binary(max_size=2048), gzipped=st.booleans())
def test_nifti_random_bytes(tmp_path, raw, gzipped):
    _read_nifti_bounded(_write(tmp_path, "x.nii.gz", gzip.compress(raw) if gzipped else raw))


@FUZZ
@given(cut=st.integers(0, len(NIFTI) - 1), gzipped=st.booleans())
def test_nifti_truncated(tmp_path, cut, gzipped):
    raw = gzip.compress(NIFTI)[:cut] if gzipped else NIFTI[:cut]
    _read_nifti_bounded(_write(tmp_path, "x.nii.gz", raw))


@FUZZ
@given(field=st.sampled_from(sorted(NIFTI_FIELDS)), data=st.data(), gzipped=st.booleans())
def test_nifti_header_values(tmp_path, field, data, gzipped):
    offset, fmt = NIFTI_FIELDS[field]
    n = struct.calcsize(fmt) // struct.calcsize(fmt[-1])
    number = st.integers(-2**15, 2**15 - 1) if fmt[-1] == "h" else st.floats(width=32, allow_nan=True)
    values = data.draw(st.lists(number, min_size=n, max_size=n))
    raw = bytearray(NIFTI)
    struct.pack_into(fmt, raw, offset, *values)
    _read_nifti_bounded(_write(tmp_path, "x.nii.gz", gzip.compress(bytes(raw)) if gzipped else bytes(raw)))


@FUZZ
@given(trailer=st.binary(min_size=4, max_size=4), flips=st.lists(st.integers(10, 200), max_size=3))
def test_nifti_gzip_trailer_and_stream_damage(tmp_path, trailer, flips):
    raw = bytearray(gzip.compress(NIFTI))
    for position in flips:
        raw[position % (len(raw) - 8)] ^= 0x5A
    _read_nifti_bounded(_write(tmp_path, "x.nii.gz", bytes(raw[:-4]) + trailer))


def _read_image_checked(path: Path) -> None:
    try:
        image = read_image(path)
        assert image.dtype == np.uint8 and image.ndim in (2, 3)
    except DataError as err:
        assert str(path) in str(err)


def _png_with_header(width: int, height: int, depth: int, colour: int, body: bytes) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (with a valid CRC, so only the values are wrong)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    return body[:8] + chunk + body[8 + 25:]


@pytest.fixture(scope="module")
def rss_budget():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < MAX_RSS_GROWTH_KB, f"peak memory grew by {grown / 2**20:.1f} GiB while reading images"


@FUZZ
@given(raw=st.binary(max_size=2048), suffix=st.sampled_from([".png", ".jpg"]))
def test_images_random_bytes(tmp_path, rss_budget, raw, suffix):
    _read_image_checked(_write(tmp_path, f"x{suffix}", raw))


@FUZZ
@given(source=st.sampled_from(["png_rgb", "png_gray", "jpeg"]), fraction=st.floats(0, 1, exclude_max=True))
def test_images_truncated(tmp_path, rss_budget, source, fraction):
    raw = {"png_rgb": PNG_RGB, "png_gray": PNG_GRAY, "jpeg": JPEG}[source]
    _read_image_checked(_write(tmp_path, ".png" if source != "jpeg" else "x.jpg", raw[: int(fraction * len(raw))]))


@FUZZ
@given(width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1),
       depth=st.sampled_from([1, 2, 4, 8, 16, 3]), colour=st.sampled_from([0, 2, 3, 4, 6, 5]),
       body=st.sampled_from([PNG_RGB, PNG_GRAY]))
def test_png_header_values(tmp_path, rss_budget, width, height, depth, colour, body):
    _read_image_checked(_write(tmp_path, "x.png", _png_with_header(width, height, depth, colour, body)))


@FUZZ
@given(width=st.integers(0, 2**16 - 1), height=st.integers(0, 2**16 - 1), components=st.integers(0, 255))
def test_jpeg_header_values(tmp_path, rss_budget, width, height, components):
    raw = bytearray(JPEG)
    sof = raw.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width, components
    struct.pack_into(">HH", raw, sof + 5, height, width)
    raw[sof + 9] = components
    _read_image_checked(_write(tmp_path, "x.jpg", bytes(raw)))


def test_image_larger_than_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = _write(tmp_path, "huge.png", _png_with_header(9_000, 8_000, 8, 2, PNG_RGB))  # under PIL's own limit
    with pytest.raises(DataError, match=r"huge\.png: 9000x8000 pixels, more than"):
        read_image(path)
