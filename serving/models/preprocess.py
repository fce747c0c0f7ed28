"""Encoded image bytes (PNG 8/16-bit, DICOM) or a raw grayscale array -> the exact training preprocessing.

Uses cxrlt's own image module (copied beside this file as cxrlt_images.py) and the bundle's two preprocessing
contracts (size, channels, mean/std, percentiles, pixel limit: the ``task1_preprocess`` / ``zeroshot_preprocess``
parameters), so serving and training cannot drift. ``PIXELS`` may carry ``BITS`` (8 or 16): then the values are
scaled like a PNG of that depth and the same image gets the same probabilities either way.
Per item: a bad item gets an ERROR string; a request whose items are all bad gets INVALID_ARGUMENT. The optional
``INDEX`` gives each item's position in the client's request (the entry leaves out items it refused itself), so that
every message names the item the client sent.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import bytes_array, invalid, parameters
from cxrlt_images import ImageReadError, PreprocessConfig, decode_image, pixels_to_image, preprocess_array


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.task1 = PreprocessConfig.from_dict(json.loads(p["task1_preprocess"]))
        self.zs = PreprocessConfig.from_dict(json.loads(p["zeroshot_preprocess"]))
        self.max_pixels = min(self.task1.max_pixels, self.zs.max_pixels)

    def _items(self, request):
        """(kind, item, bits, position in the client's request) per item."""
        items = self._arrays(request)
        index = pb_utils.get_input_tensor_by_name(request, "INDEX")
        positions = index.as_numpy().reshape(-1).tolist() if index is not None else list(range(len(items)))
        if len(positions) != len(items):
            raise ImageReadError(f"INDEX has {len(positions)} values for {len(items)} images")
        return [(*item, int(i)) for item, i in zip(items, positions, strict=True)]

    def _arrays(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS")
        bits = pb_utils.get_input_tensor_by_name(request, "BITS")
        if (encoded is None) == (pixels is None):
            raise ImageReadError("send exactly one of IMAGE (encoded PNG/DICOM bytes) or PIXELS (raw grayscale)")
        if encoded is not None:
            if bits is not None:
                raise ImageReadError("BITS goes with PIXELS; an encoded IMAGE carries its own bit depth")
            return [("IMAGE", row.reshape(-1)[0], 0) for row in encoded.as_numpy()]
        arr = pixels.as_numpy()
        if arr.ndim != 3:
            raise ImageReadError(f"PIXELS must be (batch, height, width), got shape {arr.shape}")
        depths = bits.as_numpy().reshape(-1).tolist() if bits is not None else [0] * len(arr)
        if len(depths) != len(arr):
            raise ImageReadError(f"BITS has {len(depths)} values for {len(arr)} images")
        return [("PIXELS", a, int(b)) for a, b in zip(arr, depths, strict=True)]

    def _one(self, kind, item, bits, index):
        source = f"item {index}"
        if kind == "IMAGE":
            img = decode_image(bytes(item), source, self.max_pixels, self.task1.modalities)
        else:
            img = pixels_to_image(item, bits, source, self.max_pixels)
        try:
            t1 = preprocess_array(img, self.task1)
            zs = preprocess_array(img, self.zs)
        except ImageReadError as exc:
            raise ImageReadError(f"{source}: {exc}") from None
        return self.task1.normalize(t1), self.zs.normalize(zs)

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                items = self._items(request)
            except ImageReadError as exc:
                responses.append(invalid(str(exc)))
                continue
            t1 = np.zeros((len(items), self.task1.channels, self.task1.size, self.task1.size), np.float32)
            zs = np.zeros((len(items), self.zs.channels, self.zs.size, self.zs.size), np.float32)
            errors = []
            for i, (kind, item, bits, position) in enumerate(items):
                try:
                    t1[i], zs[i] = self._one(kind, item, bits, position)
                    errors.append("")
                except ImageReadError as exc:
                    errors.append(str(exc))
                except Exception as exc:  # any other failure on one item (codec, tag, OpenCV) is that item's error
                    errors.append(f"item {position}: cannot read image ({type(exc).__name__}: {exc})")
            if all(errors):
                responses.append(invalid("; ".join(errors)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TASK1_INPUT", t1), pb_utils.Tensor("ZS_INPUT", zs),
                pb_utils.Tensor("ERROR", bytes_array(errors))]))
        return responses
