"""What a chest-radiograph server must refuse, and the reason it must give: one catalogue for the tests and the soak
benchmark (bench/serving_soak.py).

Each case is the raw ``cxr`` request inputs, ``[(input name, array, Triton dtype)]``, and a fragment the refusal
message must contain (case-insensitive).
"""

from __future__ import annotations

import math
import struct
import tempfile
import zlib
from pathlib import Path

import cv2
import numpy as np

from cxrlt.data.dicom import array_to_dicom
from cxrlt.data.images import MAX_SIDE
from cxrlt.platform import MAX_IMAGE_BYTES


def png_bytes(shape: tuple[int, int] = (40, 40), dtype=np.uint16, seed: int = 0) -> bytes:
    """A valid grayscale PNG of noise."""
    top = 1000 if dtype == np.uint16 else 255
    return cv2.imencode(".png", (np.random.default_rng(seed).random(shape) * top).astype(dtype))[1].tobytes()


def dicom_like(**tags) -> bytes:
    """A valid DX DICOM with some tags changed (what a PACS sends for CT, ultrasound ...)."""
    import pydicom

    with tempfile.TemporaryDirectory() as tmp:
        path = array_to_dicom(np.full((32, 32), 1000, np.uint16), Path(tmp) / "x.dcm")
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path)
        return path.read_bytes()


def codestream_larger_than_tags(side: int = 2048) -> bytes:
    """A DX DICOM whose tags say 64 x 64 but whose JPEG 2000 frame is ``side`` x ``side`` (a few KB on the wire)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    big = np.zeros((side, side), np.uint16)
    big[::32] = 1000
    with tempfile.TemporaryDirectory() as tmp:
        path = array_to_dicom(big, Path(tmp) / "big.dcm")
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        ds.Rows, ds.Columns = 64, 64
        ds.save_as(path)
        return path.read_bytes()


def bare_compressed_dicom() -> bytes:
    """A JPEG 2000 DX dataset written without the Part-10 header: its transfer syntax cannot be known."""
    import pydicom
    from pydicom.filewriter import write_dataset
    from pydicom.uid import JPEG2000Lossless

    with tempfile.TemporaryDirectory() as tmp:
        ds = pydicom.dcmread(array_to_dicom(np.full((32, 32), 1000, np.uint16), Path(tmp) / "x.dcm"))
    ds.compress(JPEG2000Lossless)
    out = pydicom.filebase.DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    return out.getvalue()


def png_bomb(width: int = 20_000, height: int = 20_000) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` pixels (400 M by default)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def oversize_png() -> bytes:
    """A real, fully decodable 8-bit PNG one pixel wider than the longest side accepted (a strip, ~40 KB)."""
    return cv2.imencode(".png", np.zeros((16, MAX_SIDE + 1), np.uint8))[1].tobytes()


def _obj(payload: bytes) -> np.ndarray:
    return np.array([[payload]], dtype=np.object_)


def over_cap_png(max_image_bytes: int) -> bytes:
    """A valid PNG followed by padding: one byte over the server's per-item limit, refused before it is decoded."""
    good = png_bytes()
    return good + b"\0" * (max_image_bytes + 1 - len(good))


def over_cap_pixels(max_image_bytes: int) -> np.ndarray:
    """The smallest square of raw float32 values over the per-item limit (one item)."""
    side = math.isqrt(max_image_bytes // 4) + 1
    return np.zeros((1, side, side), np.float32)


def refusal_cases(max_image_bytes: int = MAX_IMAGE_BYTES) -> dict[str, tuple[list[tuple[str, np.ndarray, str]], str]]:
    """The catalogue for a server built with ``max_image_bytes`` (its serving option)."""
    good = png_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        no_pixels = array_to_dicom(np.zeros((16, 16), np.uint16), Path(tmp) / "np.dcm", with_pixels=False).read_bytes()
    return {
        "wrong dtype": ([("PIXELS", np.zeros((1, 40, 40), np.int32), "INT32")], "data-type"),
        "wrong rank": ([("PIXELS", np.zeros((1, 2, 40, 40), np.float32), "FP32")], "shape"),
        "empty bytes": ([("IMAGE", _obj(b""), "BYTES")], "empty"),
        "truncated png": ([("IMAGE", _obj(good[: len(good) // 2]), "BYTES")], "truncated"),
        "random bytes": ([("IMAGE", _obj(np.random.default_rng(1).bytes(500)), "BYTES")], "not a PNG or DICOM"),
        "CT slice": ([("IMAGE", _obj(dicom_like(Modality="CT")), "BYTES")], "not a projection radiograph"),
        "MR image": ([("IMAGE", _obj(dicom_like(Modality="MR")), "BYTES")], "not a projection radiograph"),
        "ultrasound palette": ([("IMAGE", _obj(dicom_like(Modality="DX", PhotometricInterpretation="PALETTE COLOR")),
                                 "BYTES")], "not a grayscale radiograph"),
        "multi-frame": ([("IMAGE", _obj(dicom_like(NumberOfFrames=3)), "BYTES")], "frames"),
        "colour PNG": ([("IMAGE", _obj(cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))[1].tobytes()), "BYTES")],
                       "colour type 2"),
        "JPEG": ([("IMAGE", _obj(cv2.imencode(".jpg", np.zeros((40, 40), np.uint8))[1].tobytes()), "BYTES")],
                 "not a PNG or DICOM"),
        "dicom without pixels": ([("IMAGE", _obj(no_pixels), "BYTES")], "no pixel data"),
        "codestream larger than its tags": ([("IMAGE", _obj(codestream_larger_than_tags()), "BYTES")],
                                            "refused before decoding"),
        "compressed DICOM without file meta": ([("IMAGE", _obj(bare_compressed_dicom()), "BYTES")],
                                               "without file meta"),
        "decompression bomb": ([("IMAGE", _obj(png_bomb()), "BYTES")], "over the limit"),
        "nan pixels": ([("PIXELS", np.full((1, 40, 40), np.nan, np.float32), "FP32")], "NaN"),
        "inf pixels": ([("PIXELS", np.full((1, 40, 40), np.inf, np.float32), "FP32")], "NaN or Inf"),
        "image over the byte limit": ([("IMAGE", _obj(over_cap_png(max_image_bytes)), "BYTES")], "max_image_bytes"),
        "pixels over the byte limit": ([("PIXELS", over_cap_pixels(max_image_bytes), "FP32")], "max_image_bytes"),
        "pixels deeper than BITS": ([("PIXELS", np.full((1, 40, 40), 300, np.float32), "FP32"),
                                     ("BITS", np.array([[8]], np.int32), "INT32")], "integers in 0..255"),
    }
