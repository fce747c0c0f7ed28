"""Reading and normalising chest radiographs (8/16-bit PNG and DICOM) the same way for training and serving.

PadChest stores 16-bit PNGs that use a narrow, file-dependent slice of the 0-65535 range and sometimes carry
burned-in markers at full intensity, so high-bit-depth images are percentile-clipped before scaling. A file that
cannot be decoded raises :class:`ImageReadError` naming the file: a bad file never becomes a black image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
DICOM_MAGIC_OFFSET = 128
DEFAULT_PERCENTILES = (0.5, 99.5)
#: Decompression-bomb guard: refuse images with more pixels than this (PadChest images are at most ~4k x 4k).
DEFAULT_MAX_PIXELS = 64_000_000
#: Longest side accepted (PadChest radiographs are at most 4280 x 4280; shared/notes/padchest_facts.md).
MAX_SIDE = 8192
SCALINGS = ("percentile", "bit_depth")
#: Projection radiography modalities accepted by default (DICOM Modality): computed and digital radiography.
#: CT, MR, US, SEG, RTDOSE ... are refused before their pixels are decoded.
DEFAULT_MODALITIES = ("CR", "DX")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
PNG_GRAYSCALE = 0  # IHDR colour type of a plain grayscale PNG


try:
    from cxrlt.errors import CxrltError
except ImportError:  # shipped alone, as cxrlt_images.py, into a Triton model repository or an MLflow model

    class CxrltError(Exception):
        """Stand-in for cxrlt's error base where cxrlt is not installed."""


class ImageReadError(CxrltError, ValueError):
    """An image file or buffer could not be turned into a radiograph; the message names the source."""


@dataclass(frozen=True)
class PreprocessConfig:
    """The preprocessing contract: how raw pixels become a network input.

    One object travels with every trained network (member card, ensemble spec, served bundle) and every consumer
    (training, ``cxrlt predict``, ONNX export, the Triton ``preprocess`` model, the MLflow pyfunc) derives its
    transform from it, so no consumer carries its own copy of these constants. ``channels`` 3 replicates the
    grayscale radiograph before the per-channel ``mean``/``std`` (ImageNet, CLIP or CheXzero statistics).
    """

    size: int = 512
    percentiles: tuple[float, float] = DEFAULT_PERCENTILES
    max_pixels: int = DEFAULT_MAX_PIXELS
    channels: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    #: ``percentile``: wide images percentile-clipped (robust to markers; seed 000, HPH Task 1); ``bit_depth``:
    #: divided by 255 or 65535 (HPH's CLIP branch)
    scaling: str = "percentile"
    #: DICOM modalities accepted as chest radiographs (the acceptance policy travels with the bundle)
    modalities: tuple[str, ...] = DEFAULT_MODALITIES

    def __post_init__(self):
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean {self.mean} and std {self.std} need one value per channel ({self.channels})")
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {self.std}")

    def to_dict(self) -> dict:
        return {"size": self.size, "percentiles": list(self.percentiles), "max_pixels": self.max_pixels,
                "channels": self.channels, "mean": list(self.mean), "std": list(self.std), "scaling": self.scaling,
                "modalities": list(self.modalities)}

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Read a stored contract; contracts written before channels/mean/std existed mean (1, 0.5, 0.25)."""
        return cls(
            size=int(d["size"]),
            percentiles=tuple(float(v) for v in d.get("percentiles", DEFAULT_PERCENTILES)),
            max_pixels=int(d.get("max_pixels", DEFAULT_MAX_PIXELS)),
            channels=int(d.get("channels", 1)),
            mean=tuple(float(v) for v in d.get("mean", (0.5,))),
            std=tuple(float(v) for v in d.get("std", (0.25,))),
            scaling=str(d.get("scaling", "percentile")),
            modalities=tuple(str(m) for m in d.get("modalities", DEFAULT_MODALITIES)),
        )

    def normalize(self, img01: np.ndarray) -> np.ndarray:
        """[0, 1] image(s) ``(..., S, S)`` -> network input ``(..., C, S, S)`` float32."""
        img01 = np.asarray(img01, dtype=np.float32)
        x = np.repeat(img01[..., None, :, :], self.channels, axis=-3)
        mean = np.asarray(self.mean, np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(-1, 1, 1)
        return (x - mean) / std


def is_dicom(data: bytes) -> bool:
    """A DICOM Part-10 file (preamble + "DICM"), or a bare little-endian dataset without one, as some PACS exports
    and older modalities write: it starts with an element of group 0008 (implicit or explicit VR)."""
    if len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    return _is_bare_dataset(data)


_EXPLICIT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN "
                          b"UR US UT UV".split())


def _is_bare_dataset(data: bytes) -> bool:
    if len(data) < 16 or data[:2] != b"\x08\x00":
        return False
    if data[4:6] in _EXPLICIT_VRS:
        return True
    return int.from_bytes(data[4:8], "little") < min(len(data), 1 << 16)  # implicit VR: a short first value


def is_png(data: bytes) -> bool:
    return data[:8] == PNG_SIGNATURE


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS,
                 modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> np.ndarray:
    """Decode a chest radiograph, a grayscale 8/16-bit PNG or a projection-radiography DICOM, to a 2-D array
    (uint8, uint16, or float32 for DICOM after its LUTs).

    The acceptance policy is checked from the headers before any pixel is decoded: other containers (JPEG, TIFF,
    WebP, BMP, JPEG 2000 ...) are refused by signature, colour PNGs by their IHDR, and DICOMs that are not a single
    grayscale frame of an accepted modality (CT, MR, ultrasound, segmentations, RT dose ...) by their tags. Raises
    :class:`ImageReadError` naming the source and the reason.
    """
    if not data:
        raise ImageReadError(f"{source}: file is empty")
    if is_dicom(data):
        return _decode_dicom(data, source, max_pixels, modalities)
    if not is_png(data):
        raise ImageReadError(f"{source}: not a PNG or DICOM file (only grayscale PNG and DICOM projection "
                             "radiographs are accepted)")
    _check_png_header(data, source, max_pixels)
    if not data.rstrip(b"\x00").endswith(PNG_IEND):
        raise ImageReadError(f"{source}: PNG is truncated (no IEND chunk at the end of the file)")
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{source}: cannot decode PNG")
    return _to_grayscale(img, source, max_pixels)


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS,
               modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> np.ndarray:
    """Read a radiograph file (PNG 8/16-bit or DICOM) to a 2-D array; see :func:`decode_image`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot read file ({exc.strerror})") from None
    return decode_image(data, str(path), max_pixels, modalities)


def _check_size(width: int, height: int, source: str, max_pixels: int) -> None:
    """Header-level limits, checked before any pixel is decoded: pixel count and longest side."""
    if width * height > max_pixels:
        raise ImageReadError(f"{source}: image is {width}x{height}, over the limit of {max_pixels} pixels")
    if max(width, height) > MAX_SIDE:
        raise ImageReadError(f"{source}: image is {width}x{height}, over the limit of {MAX_SIDE} pixels per side")


def _check_png_header(data: bytes, source: str, max_pixels: int) -> None:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageReadError(f"{source}: PNG header is damaged")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    if width == 0 or height == 0:
        raise ImageReadError(f"{source}: PNG has zero size")
    _check_size(width, height, source, max_pixels)
    bit_depth, colour_type = data[24], data[25]
    if colour_type != PNG_GRAYSCALE or bit_depth not in (8, 16):
        raise ImageReadError(f"{source}: PNG is colour type {colour_type} at {bit_depth} bits; a radiograph is "
                             "grayscale at 8 or 16 bits")


def _to_grayscale(img: np.ndarray, source: str, max_pixels: int) -> np.ndarray:
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = img[:, :, :3]
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[:, :, 0]
    if img.ndim != 2 or img.size == 0:
        raise ImageReadError(f"{source}: expected a 2-D grayscale image, got shape {img.shape}")
    _check_size(img.shape[1], img.shape[0], source, max_pixels)
    return img


def check_dicom_acceptance(ds, source: str, modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> None:
    """Refuse (from tags alone) anything but a single grayscale frame of a projection-radiography modality."""
    modality = str(ds.get("Modality", "")).strip()
    if modality not in modalities:
        what = f"Modality {modality}" if modality else "a DICOM without a Modality tag"
        raise ImageReadError(f"{source}: {what} is not a projection radiograph (accepted: {', '.join(modalities)})")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if samples != 1 or photometric not in MONOCHROME:
        raise ImageReadError(f"{source}: {photometric} with {samples} samples per pixel is not a grayscale "
                             "radiograph (MONOCHROME1/2, one sample per pixel)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(f"{source}: {frames} frames; a radiograph is a single frame")


#: A Deflated-transfer-syntax dataset may inflate to at most this many bytes per allowed pixel (16-bit pixels
#: plus the header and overlays a radiograph carries), so a small "zip bomb" is refused before it is inflated.
DEFLATE_BYTES_PER_PIXEL, DEFLATE_SLACK = 4, 1 << 20


def _check_deflate_bound(data: bytes, source: str, max_pixels: int) -> None:
    """For the Deflated Explicit VR Little Endian transfer syntax, inflate incrementally and refuse the file as soon
    as it would exceed what a radiograph within the pixel limit can need (``dcmread`` itself inflates unbounded)."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:  # damaged meta: dcmread reports it below with its own message
        return
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    limit = max_pixels * DEFLATE_BYTES_PER_PIXEL + DEFLATE_SLACK
    inflater, inflated, pending = zlib.decompressobj(-zlib.MAX_WBITS), 0, data[fp.tell():]
    try:
        while pending and inflated <= limit:
            inflated += len(inflater.decompress(pending, 1 << 20))
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ImageReadError(f"{source}: damaged Deflate stream ({exc})") from None
    if inflated > limit:
        raise ImageReadError(f"{source}: the Deflated dataset inflates beyond {limit} bytes, more than a radiograph "
                             f"within the limit of {max_pixels} pixels needs")


def _decode_dicom(data: bytes, source: str, max_pixels: int,
                  modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise ImageReadError(f"{source}: DICOM support is not installed (pip install 'cxrlt[dicom]')") from None

    _check_deflate_bound(data, source, max_pixels)
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # pydicom raises many types for damaged files
        raise ImageReadError(f"{source}: cannot parse DICOM ({exc})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{source}: DICOM has no pixel data")
    _set_bare_transfer_syntax(ds, source)
    try:
        check_dicom_acceptance(ds, source, modalities)
    except ImageReadError:
        raise
    except (TypeError, ValueError) as exc:  # a malformed or multi-valued tag
        raise ImageReadError(f"{source}: unreadable acceptance tags ({exc})") from None
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    _check_size(cols, rows, source, max_pixels)
    _check_codestream(ds, source)
    try:
        # one frame only: pydicom would otherwise also decode frames beyond NumberOfFrames that the data holds
        arr = pydicom.pixels.pixel_array(ds, index=0, allow_excess_frames=False)
    except Exception as exc:
        arr = _decode_with_gdcm(data, ds, source, exc)
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise ImageReadError(f"{source}: expected a single {cols}x{rows} grayscale frame, got shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, prefer_lut=True).astype(np.float32)
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    return arr


def _set_bare_transfer_syntax(ds, source: str) -> None:
    """A dataset without file meta has no transfer syntax: pydicom read it as implicit or explicit VR little endian,
    which is only right for native pixel data; compressed (encapsulated) pixel data cannot be read without it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if ds["PixelData"].is_undefined_length:
        raise ImageReadError(f"{source}: DICOM without file meta information (no Part-10 header) holds compressed "
                             "pixel data; its transfer syntax cannot be known: send it as a Part-10 file")
    ds.file_meta = meta if meta is not None else FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.original_encoding[0] else ExplicitVRLittleEndian


#: JPEG start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS's SOF55: each is followed by the frame header
_JPEG_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7})
#: JPEG markers without a length field
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def codestream_header(frame: bytes) -> tuple[str, int, int, int, int] | None:
    """(codec, columns, rows, bit depth, components) from the header of a JPEG / JPEG-LS frame (SOFn) or a JPEG 2000
    codestream (SIZ), without decoding it; None when the frame is none of these (RLE, or unreadable)."""
    if frame[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(frame):
            if frame[pos] != 0xFF:
                return None
            marker = frame[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_STANDALONE:
                pos += 2
                continue
            if marker in _JPEG_SOF and pos + 10 <= len(frame):
                codec = "JPEG-LS" if marker == 0xF7 else "JPEG"
                width, height = (int.from_bytes(frame[at:at + 2], "big") for at in (pos + 7, pos + 5))
                return codec, width, height, frame[pos + 4], frame[pos + 9]
            pos += 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
        return None
    start = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # SOC + SIZ (a JP2 wrapper puts boxes before them)
    if start < 0 or start + 43 > len(frame):
        return None
    siz = frame[start + 4:]

    def u32(at: int) -> int:
        return int.from_bytes(siz[at:at + 4], "big")

    return ("JPEG 2000", u32(4) - u32(12), u32(8) - u32(16), (siz[38] & 0x7F) + 1, int.from_bytes(siz[36:38], "big"))


def _check_codestream(ds, source: str) -> None:
    """Compressed pixel data is decoded to the size its codestream says, not the size the tags say: compare the two
    before decoding, so that a small file cannot decode to a huge image."""
    from pydicom.encaps import generate_fragmented_frames

    if not ds["PixelData"].is_undefined_length:
        return
    try:
        first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1), (b"",))[0]
    except Exception as exc:
        raise ImageReadError(f"{source}: damaged encapsulated pixel data ({exc})") from None
    header = codestream_header(first)
    if header is None:
        return  # RLE and other syntaxes decode to the tags' size
    codec, width, height, depth, components = header
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    allocated = int(ds.get("BitsAllocated", 16) or 16)
    if (width, height) != (cols, rows) or components != 1 or depth > allocated:
        raise ImageReadError(
            f"{source}: the {codec} codestream is {width}x{height} with {components} component(s) of {depth} bits, "
            f"but the DICOM tags say {cols}x{rows}, one sample of at most {allocated} bits; refused before decoding")


#: GDCM's scalar types -> numpy
_GDCM_DTYPES = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16, "UINT32": np.uint32,
                "INT32": np.int32}


def _decode_with_gdcm(data: bytes, ds, source: str, first_error: Exception) -> np.ndarray:
    """GDCM's own reader for the codestreams pydicom's plugins cannot decode (12-bit JPEG Extended that libjpeg
    refuses, for example); the size was checked against the codestream before."""
    try:
        import gdcm
    except ImportError:
        raise ImageReadError(f"{source}: cannot decode DICOM pixel data ({first_error})") from None
    import tempfile

    gdcm.Trace.ErrorOff()  # GDCM prints its codec attempts to stderr; failures are reported below
    gdcm.Trace.WarningOff()
    with tempfile.NamedTemporaryFile(suffix=".dcm") as tmp:  # GDCM reads files, not buffers
        tmp.write(data)
        tmp.flush()
        reader = gdcm.ImageReader()
        reader.SetFileName(tmp.name)
        if not reader.Read():
            raise ImageReadError(f"{source}: cannot decode DICOM pixel data ({first_error}; GDCM cannot read it "
                                 "either)") from None
        image = reader.GetImage()
        dims = list(image.GetDimensions())
        fmt = image.GetPixelFormat()
        dtype = _GDCM_DTYPES.get(fmt.GetScalarTypeAsString())
        if dtype is None or fmt.GetSamplesPerPixel() != 1 or dims[2:] not in ([], [1]):
            raise ImageReadError(f"{source}: cannot decode DICOM pixel data ({first_error}); GDCM reads "
                                 f"{fmt.GetScalarTypeAsString()} x{fmt.GetSamplesPerPixel()} with dimensions {dims}")
        buffer = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM's SWIG returns bytes as str
    cols, rows = dims[:2]
    if len(buffer) != rows * cols * np.dtype(dtype).itemsize:
        raise ImageReadError(f"{source}: GDCM decoded {len(buffer)} bytes for a {cols}x{rows} image")
    return np.frombuffer(buffer, dtype=dtype).reshape(rows, cols)


PIXEL_BITS = (8, 16)


def pixels_to_image(pixels: np.ndarray, bits: int | None, source: str = "<pixels>",
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A raw grayscale array sent as numbers -> the array a file of the same image decodes to.

    ``bits`` 8 or 16: the values are the integers of an 8/16-bit image and become ``uint8``/``uint16``, so they are
    scaled exactly like the PNG of that image (8-bit by /255, 16-bit percentile-clipped); ``None`` or 0: real values
    (for example a DICOM after its LUTs), percentile-clipped. Values that do not fit the stated depth are refused.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 2:
        raise ImageReadError(f"{source}: expected a 2-D grayscale array, got shape {arr.shape}")
    if arr.size == 0 or min(arr.shape) < 8:
        raise ImageReadError(f"{source}: image is too small ({arr.shape[1]}x{arr.shape[0]})")
    _check_size(arr.shape[1], arr.shape[0], source, max_pixels)
    if not np.isfinite(arr).all():
        raise ImageReadError(f"{source}: image contains NaN or Inf values")
    if not bits:
        return arr.astype(np.float32, copy=False)
    if bits not in PIXEL_BITS:
        raise ImageReadError(f"{source}: BITS must be 8 or 16 (or 0 for real values), got {bits}")
    top = (1 << bits) - 1
    if arr.min() < 0 or arr.max() > top or not np.array_equal(arr, np.round(arr)):
        raise ImageReadError(f"{source}: values must be integers in 0..{top} for a {bits}-bit image "
                             f"(got {float(arr.min()):g}..{float(arr.max()):g})")
    return arr.astype(np.uint8 if bits == 8 else np.uint16)


def to_unit_range(img: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                  scaling: str = "percentile") -> np.ndarray:
    """Scale to float32 [0, 1]: 8-bit by /255; wider images by percentile clipping (robust to markers), or with
    ``scaling="bit_depth"`` 16-bit integers by /65535 (other types, such as DICOM after its LUTs, still clip)."""
    if not np.isfinite(img).all():
        raise ImageReadError("image contains NaN or Inf values")
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if scaling == "bit_depth" and img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    flat = img.reshape(-1)
    stride = max(1, flat.size // 200_000)  # percentiles of a strided sample: exact enough, 10x faster
    lo, hi = np.percentile(flat[::stride].astype(np.float64), percentiles)  # float64: no overflow between extremes
    if hi <= lo:
        hi = float(img.max())
        lo = float(img.min())
        if hi <= lo:
            return np.zeros(img.shape, np.float32)  # a genuinely constant image stays constant
    if img.dtype.kind in "ui" and img.dtype.itemsize <= 2:  # small integers: float32 is exact and cannot overflow
        out = (img.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
        return np.clip(out, 0.0, 1.0, out=out)
    return _scale_wide(img, float(lo), float(hi))


#: rows per float64 block in :func:`_scale_wide` are chosen so that one block holds about this many pixels
_WIDE_BLOCK_PIXELS = 1 << 20


def _scale_wide(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(img - lo) / (hi - lo) clipped to [0, 1] for float or wide integer images, in float64 so that any finite input
    (float32 values of +-3e38 included) stays finite, a block of rows at a time so memory stays near the float32
    output."""
    out = np.empty(img.shape, np.float32)
    span = hi - lo  # float64: the difference of two finite float32 values cannot overflow
    rows = max(1, _WIDE_BLOCK_PIXELS // max(1, img.shape[-1]))
    for start in range(0, img.shape[0], rows):
        block = (img[start:start + rows].astype(np.float64) - lo) / span
        out[start:start + rows] = np.clip(block, 0.0, 1.0)
    return out


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Zero-pad the shorter side symmetrically so the anatomy keeps its aspect ratio."""
    h, w = img.shape[:2]
    if h == w:
        return img
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(img, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=0)


def fit_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longest side is ``size`` (aspect kept), then zero-pad the short side to a centred square.

    Resizing first keeps memory proportional to the input plus the output, never to the longest side squared (a
    40000 x 1600 strip padded first would be a 6.4 GB float32 square)."""
    h, w = img.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return pad_to_square(img)


def preprocess_array(img: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Raw 2-D array -> float32 [0, 1] square image of ``cfg.size`` (the training/serving input); an item that does
    not come out finite is refused rather than scored."""
    out = fit_square(to_unit_range(img, cfg.percentiles, cfg.scaling), cfg.size)
    if not np.isfinite(out).all():
        raise ImageReadError("preprocessing produced NaN or Inf values (pixel values out of range?)")
    return out


def load_preprocessed(path: str | Path, cfg: PreprocessConfig) -> np.ndarray:
    """Read a file and apply :func:`preprocess_array`; errors name the file."""
    img = read_image(path, cfg.max_pixels, cfg.modalities)
    try:
        return preprocess_array(img, cfg)
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from None


def to_uint16(img01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(img01, 0.0, 1.0) * 65535.0).astype(np.uint16)


def write_png16(path: str | Path, img: np.ndarray) -> None:
    """Write a uint16 (or [0, 1] float) array as a 16-bit grayscale PNG, atomically."""
    path = Path(path)
    arr = img if img.dtype == np.uint16 else to_uint16(img)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.tobytes())
    tmp.replace(path)
