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


def _frame_swapped(small: np.ndarray, big: np.ndarray, uid, bits: int = 12, **kw) -> bytes:
    """A DICOM whose tags describe ``small`` but whose compressed frame holds ``big``."""
    ds = _dataset(big, bits)
    ds.compress(uid, **kw)
    ds.Rows, ds.Columns = small.shape
    return _bytes(ds)


_MEASURE_DECODE = """
import resource, sys
from cxrlt.data.images import ImageReadError, decode_image
data = open(sys.argv[1], 'rb').read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    decode_image(data, 'big.dcm')
    print('decoded')
except ImageReadError as exc:
    print('refused:', exc)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("uid", [JPEG2000Lossless, JPEGLSLossless], ids=lambda v: v.name)
def test_a_frame_larger_than_its_tags_is_refused_before_decoding_in_bounded_memory(uid, tmp_path):
    """Tags say 160 x 144; the codestream holds 4096 x 4096 (decoding it would take about 100 MB). The header is
    compared with the tags first: refused, and the process's peak memory grows by less than 16 MB."""
    import subprocess
    import sys

    big = np.zeros((4096, 4096), np.uint16)
    big[::64] = 1000
    data = _frame_swapped(_radiograph(), big, uid)
    assert len(data) < 2_000_000
    (tmp_path / "big.dcm").write_bytes(data)
    done = subprocess.run([sys.executable, "-c", _MEASURE_DECODE, str(tmp_path / "big.dcm")], capture_output=True,
                          text=True, check=True)
    verdict, grown = done.stdout.strip().splitlines()
    assert verdict.startswith("refused:") and "codestream is 4096x4096" in verdict and "tags say 144x160" in verdict
    assert int(grown) < 16 << 20, f"peak memory grew by {int(grown) / 2**20:.1f} MiB"


def test_the_codestream_headers_are_read_without_decoding():
    """Hand-checked headers: JPEG (SOF), JPEG-LS (SOF55) and JPEG 2000 (SIZ) of files made here."""
    from pydicom.encaps import generate_fragmented_frames

    from cxrlt.data.images import codestream_header

    for uid, codec in ((JPEG2000Lossless, "JPEG 2000"), (JPEGLSLossless, "JPEG-LS")):
        ds = pydicom.dcmread(io.BytesIO(_compressed(uid)[1]))
        first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]
        assert codestream_header(first) == (codec, 144, 160, 12, 1)  # _radiograph: 160 rows x 144 columns
    jpeg = cv2.imencode(".jpg", np.zeros((30, 50), np.uint8))[1].tobytes()
    assert codestream_header(jpeg) == ("JPEG", 50, 30, 8, 1)
    assert codestream_header(b"\x00" * 64) is None


def test_12_bit_jpeg_extended_that_libjpeg_refuses_is_decoded_by_gdcm():
    """pydicom's JPEG-lossy.dcm (process 2/4, 12 bits, a scan header libjpeg refuses): decoded through GDCM, and its
    pixels equal GDCM's own reading of the original file (pydicom's plugins all refuse it)."""
    gdcm = pytest.importorskip("gdcm")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")
    source = pydicom.dcmread(path)
    with pytest.raises(RuntimeError, match="Unable to decode"):
        _ = source.pixel_array
    reader = gdcm.ImageReader()
    reader.SetFileName(path)
    assert reader.Read()
    expected = np.frombuffer(reader.GetImage().GetBuffer().encode("utf-8", "surrogateescape"), np.uint16)
    source.Modality = "CR"
    got = decode_image(_bytes(source), "JPEG-lossy.dcm")
    assert got.shape == (1024, 256) and got.max() > 0
    np.testing.assert_array_equal(got.reshape(-1), expected.reshape(-1).astype(np.float32))


def test_a_dicom_without_the_part10_header_is_read_when_its_pixels_are_native():
    """A bare dataset (no preamble, no file meta) decodes like the Part-10 file; a compressed one is refused saying
    what is missing."""
    from pydicom.filewriter import write_dataset

    arr = _radiograph()
    original = _bytes(_dataset(arr))
    for implicit in (True, False):
        ds = _dataset(arr)
        bare = pydicom.filebase.DicomBytesIO()
        bare.is_little_endian, bare.is_implicit_VR = True, implicit
        write_dataset(bare, ds)
        data = bare.getvalue()
        assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
        np.testing.assert_array_equal(_preprocessed(data), _preprocessed(original))
    ds = pydicom.dcmread(io.BytesIO(_compressed(JPEG2000Lossless)[1]))
    bare = pydicom.filebase.DicomBytesIO()
    bare.is_little_endian, bare.is_implicit_VR = True, False
    write_dataset(bare, ds)
    with pytest.raises(ImageReadError, match="without file meta.*compressed"):
        decode_image(bare.getvalue(), "bare.dcm")
