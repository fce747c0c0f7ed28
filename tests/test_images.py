import cv2
import numpy as np
import pytest

from cxrlt.data.dicom import array_to_dicom
from cxrlt.data.images import (
    ImageReadError,
    PreprocessConfig,
    decode_image,
    load_preprocessed,
    pad_to_square,
    preprocess_array,
    read_image,
    to_unit_range,
)


def _write_png(path, arr):
    assert cv2.imwrite(str(path), arr)
    return path


def _gradient16(h=40, w=30, lo=10000, span=3000):
    return (lo + np.linspace(0, span, h * w).reshape(h, w)).astype(np.uint16)


def test_reads_8_and_16_bit_png(tmp_path):
    a8 = np.arange(64, dtype=np.uint8).reshape(8, 8)
    a16 = _gradient16()
    assert np.array_equal(read_image(_write_png(tmp_path / "a8.png", a8)), a8)
    out16 = read_image(_write_png(tmp_path / "a16.png", a16))
    assert out16.dtype == np.uint16 and np.array_equal(out16, a16)


def test_float32_extremes_scale_without_overflow():
    """Hand-computed: 5000 values of -3e38, 100 zeros, 4900 of +3e38; the 0.5th and 99.5th percentiles are the two
    extremes, so they map to 0 and 1 and zero to exactly 0.5 (in float32, 3e38 - -3e38 would be Inf and give NaN)."""
    from cxrlt.data.images import to_unit_range

    img = np.full((100, 100), 3e38, np.float32)
    img[:, :50] = -3e38
    img[:, 50] = 0
    out = to_unit_range(img)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert (out[:, :50] == 0).all() and (out[:, 50] == 0.5).all() and (out[:, 51:] == 1).all()


def test_16_bit_percentile_clip_ignores_burned_in_marker():
    img = _gradient16(100, 100)
    img[:3, :3] = 65535  # 0.09 % of pixels at full scale
    unit = to_unit_range(img)
    assert unit.dtype == np.float32 and unit.min() == 0.0 and unit.max() == 1.0
    # without the clip the marker would squash the anatomy into the bottom ~5 % of the range
    assert np.median(unit) == pytest.approx(0.5, abs=0.05)


def test_pad_to_square_keeps_aspect_and_centres():
    img = np.ones((40, 20), np.float32)
    sq = pad_to_square(img)
    assert sq.shape == (40, 40)
    assert sq[:, :10].sum() == 0 and sq[:, 30:].sum() == 0 and sq[:, 10:30].min() == 1


def test_preprocess_array_output_shape_and_range():
    out = preprocess_array(_gradient16(50, 37), PreprocessConfig(size=32))
    assert out.shape == (32, 32) and out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("monochrome1", [False, True])
def test_dicom_with_rescale_and_monochrome1_matches_png(tmp_path, monochrome1):
    arr = _gradient16(32, 32)
    dcm = array_to_dicom(arr, tmp_path / "x.dcm", monochrome1=monochrome1, rescale_slope=2.0, rescale_intercept=-100)
    out = read_image(dcm)
    assert out.shape == arr.shape
    expected = arr.astype(np.float32) * 2.0 - 100
    # After MONOCHROME1 inversion bright stays bright: the result is monotone in the original pixel values.
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.999
    cfg = PreprocessConfig(size=16)
    png = _write_png(tmp_path / "x.png", arr)
    np.testing.assert_allclose(load_preprocessed(dcm, cfg), load_preprocessed(png, cfg), atol=2e-3)


def test_truncated_png_raises_naming_the_file(tmp_path):
    path = _write_png(tmp_path / "t.png", _gradient16())
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"t\.png.*truncated"):
        read_image(path)


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"", "empty"), (b"\x00\x01garbage" * 10, "not a PNG or DICOM"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "header")],
)
def test_bad_bytes_raise_clear_errors(payload, message):
    with pytest.raises(ImageReadError, match=message):
        decode_image(payload, "upload")


def test_missing_file_and_dicom_without_pixels(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "nope.png")
    dcm = array_to_dicom(_gradient16(8, 8), tmp_path / "np.dcm", with_pixels=False)
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_image(dcm)


def test_decompression_bomb_is_refused(tmp_path):
    path = _write_png(tmp_path / "big.png", np.zeros((300, 300), np.uint8))
    with pytest.raises(ImageReadError, match="over the limit"):
        read_image(path, max_pixels=10_000)


def test_nan_input_is_refused():
    img = np.ones((4, 4), np.float32)
    img[0, 0] = np.nan
    with pytest.raises(ImageReadError, match="NaN"):
        to_unit_range(img)


@pytest.mark.parametrize(("tags", "message"), [
    ({"Modality": "CT"}, "Modality CT is not a projection radiograph"),
    ({"Modality": "MR"}, "Modality MR is not a projection radiograph"),
    ({"Modality": "SEG"}, "Modality SEG"),
    ({"Modality": "RTDOSE"}, "Modality RTDOSE"),
    ({"PhotometricInterpretation": "PALETTE COLOR"}, "not a grayscale radiograph"),
    ({"NumberOfFrames": 3}, "3 frames"),
])
def test_non_radiograph_dicoms_are_refused_before_decoding(tmp_path, tags, message):
    import pydicom

    path = array_to_dicom(_gradient16(16, 16), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = b"\x00"  # would fail to decode: the refusal must come from the tags first
    ds.save_as(path)
    with pytest.raises(ImageReadError, match=message):
        read_image(path)


def test_modality_allow_list_comes_from_the_contract(tmp_path):
    import pydicom

    path = array_to_dicom(_gradient16(16, 16), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.Modality = "RG"  # radiographic imaging (conventional film/screen), off by default
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="accepted: CR, DX"):
        load_preprocessed(path, PreprocessConfig(size=8))
    assert load_preprocessed(path, PreprocessConfig(size=8, modalities=("CR", "DX", "RG"))).shape == (8, 8)


def test_only_grayscale_png_is_accepted(tmp_path):
    colour = cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes()
    with pytest.raises(ImageReadError, match="colour type 2 at 8 bits"):
        decode_image(colour, "upload")
    for ext in (".jpg", ".tiff", ".bmp", ".webp"):
        encoded = cv2.imencode(ext, np.zeros((20, 20), np.uint8))[1].tobytes()
        with pytest.raises(ImageReadError, match="not a PNG or DICOM"):
            decode_image(encoded, f"upload{ext}")


def test_preprocessing_memory_is_bounded_by_input_and_output_not_the_side_squared():
    """The worst strip the limits accept, and a refused bomb: peak memory stays far below side^2 float32."""
    import tracemalloc

    from cxrlt.data.images import MAX_SIDE, preprocess_array

    strip = np.random.default_rng(0).integers(0, 4096, (MAX_SIDE, 400), dtype=np.uint16)  # 3.3 M px
    tracemalloc.start()
    out = preprocess_array(strip, PreprocessConfig(size=512))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    squared = MAX_SIDE * MAX_SIDE * 4  # 268 MB: what padding to a square before resizing would allocate
    assert out.shape == (512, 512) and peak < 8 * strip.size * 4 and peak < squared / 10
    bomb = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (40000).to_bytes(4, "big") + \
        (1600).to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]) + b"\x00" * 4
    tracemalloc.start()
    with pytest.raises(ImageReadError, match="per side"):
        decode_image(bomb, "strip.png")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000  # refused from the header: nothing decoded


def test_fit_square_keeps_aspect_and_centres():
    from cxrlt.data.images import fit_square

    img = np.ones((100, 50), np.float32)
    sq = fit_square(img, 20)
    assert sq.shape == (20, 20) and sq[:, :5].sum() == 0 and sq[:, 5:15].min() == 1 and sq[:, 15:].sum() == 0
