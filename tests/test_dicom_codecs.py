"""Compressed and re-encoded DICOM radiographs decode to the same preprocessed image as the uncompressed original.

Test files are built here in each transfer syntax from one synthetic 12-bit radiograph: pydicom's encoders (RLE,
JPEG-LS via pyjpegls, JPEG 2000 via pylibjpeg-openjpeg), OpenCV for JPEG Baseline (8-bit, encapsulated by pydicom),
pydicom's writer for Deflate and Implicit VR. JPEG Extended (12-bit) and Explicit VR Big Endian have no encoder here:
their test files take the compressed pixel data of files shipped inside the pydicom wheel (MIT licence; read from the
installed package, not copied into this repository) under a CR header, and are compared with pydicom's own decoding.
No encoder exists here for JPEG Lossless (process 14, SV1); its decoder's availability is asserted instead.
"""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest

from cxrlt.data.images import ImageReadError, PreprocessConfig, decode_image, preprocess_array

pydicom = pytest.importorskip("pydicom")
from pydicom.uid import (  # noqa: E402
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

CONTRACT = PreprocessConfig(size=64)


def _radiograph(bits: int = 12) -> np.ndarray:
    """A smooth radiograph-like image with structure at every scale, in ``bits`` bits."""
    yy, xx = np.mgrid[0:160, 0:144].astype(np.float32)
    img = 0.5 + 0.3 * np.sin(xx / 9) * np.cos(yy / 13) - 0.25 * (((xx - 72) / 60) ** 2 + ((yy - 80) / 70) ** 2)
    img = cv2.GaussianBlur(np.clip(img, 0, 1), (0, 0), 1.5)
    return np.round(img * (2**bits - 1) * 0.9 + 50).astype(np.uint16)


def _dataset(arr: np.ndarray, bits: int = 12):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("cr.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "CR", "SYNTH"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.PixelData = arr.astype(np.uint8 if bits == 8 else "<u2").tobytes()
    return ds


def _bytes(ds, **kw) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, **kw)
    return out.getvalue()


def _preprocessed(data: bytes) -> np.ndarray:
    return preprocess_array(decode_image(data, "test.dcm"), CONTRACT)


def _compressed(uid, bits: int = 12, **kw) -> tuple[bytes, bytes]:
    """(uncompressed original, the same image in transfer syntax ``uid``)."""
    arr = _radiograph(bits)
    original = _bytes(_dataset(arr, bits))
    ds = _dataset(arr, bits)
    ds.compress(uid, **kw)
    return original, _bytes(ds)


@pytest.mark.parametrize(("uid", "kw", "tolerance"), [
    (RLELossless, {}, 0.0),
    (JPEGLSLossless, {}, 0.0),
    (JPEG2000Lossless, {}, 0.0),
    (JPEGLSNearLossless, {"jls_error": 3}, 0.004),  # |error| <= 3 of 4095 grey levels
    (JPEG2000, {"j2k_cr": [15]}, 0.01),  # lossy, 15:1
], ids=lambda v: getattr(v, "name", None) or "")
def test_compressed_transfer_syntaxes_match_the_uncompressed_original(uid, kw, tolerance):
    original, compressed = _compressed(uid, **kw)
    assert pydicom.dcmread(io.BytesIO(compressed)).file_meta.TransferSyntaxUID == uid
    a, b = _preprocessed(original), _preprocessed(compressed)
    if tolerance == 0:
        np.testing.assert_array_equal(a, b)
    else:
        assert np.abs(a - b).mean() < tolerance and np.abs(a - b).max() < 20 * tolerance


def test_jpeg_baseline_8bit_matches_within_the_codec_loss():
    from pydicom.encaps import encapsulate

    arr = (_radiograph(12) >> 4).astype(np.uint8)
    ds = _dataset(arr, 8)
    original = _bytes(ds)
    ok, jpeg = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PhotometricInterpretation = "MONOCHROME2"
    a, b = _preprocessed(original), _preprocessed(_bytes(ds))
    assert np.abs(a - b).mean() < 0.01


@pytest.mark.parametrize("writer", ["deflate", "implicit"])
def test_deflate_and_implicit_vr_are_lossless(writer):
    arr = _radiograph()
    original = _bytes(_dataset(arr))
    ds = _dataset(arr)
    if writer == "deflate":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        data = _bytes(ds)
    else:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        data = _bytes(ds, implicit_vr=True)
    np.testing.assert_array_equal(_preprocessed(original), _preprocessed(data))


@pytest.mark.parametrize("fixture", ["JPGExtended.dcm", "MR_small_bigendian.dcm"])
def test_syntaxes_without_an_encoder_here_decode_like_pydicom(fixture):
    """JPEG Extended 12-bit and Explicit VR Big Endian: pixel data from pydicom's own test files under a CR header."""
    from pydicom.data import get_testdata_file

    source = pydicom.dcmread(get_testdata_file(fixture))
    source.Modality = "CR"
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth", "VOILUTSequence"):
        if tag in source:
            delattr(source, tag)
    out = io.BytesIO()
    source.save_as(out)
    expected = source.pixel_array.astype(np.float32)
    np.testing.assert_array_equal(decode_image(out.getvalue(), fixture), expected)


def test_jpeg_lossless_sv1_decoder_is_installed():
    from pydicom.pixels.decoders import JPEGLosslessSV1Decoder

    assert JPEGLosslessSV1Decoder.is_available, "pylibjpeg-libjpeg decodes JPEG Lossless (process 14, SV1)"


def test_a_deflate_bomb_is_refused_before_it_is_inflated():
    """A tiny Deflated file whose dataset inflates far beyond what the pixel limit allows is refused."""
    arr = _radiograph()
    ds = _dataset(arr)
    ds.add_new(0x00091010, "OB", b"\0" * (24 << 20))  # 24 MB of zeros in a private tag: ~24 KB once deflated
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _bytes(ds)
    assert len(data) < 200_000
    with pytest.raises(ImageReadError, match="inflates beyond"):
        decode_image(data, "bomb.dcm", max_pixels=1_000_000)  # limit: 4 MB + 1 MB
    broken = data[:-2000] + zlib.compress(b"x")[:10]
    with pytest.raises(ImageReadError):
        decode_image(broken, "broken.dcm", max_pixels=1_000_000)
