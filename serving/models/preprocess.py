"""Encoded image bytes (PNG 8/16-bit, DICOM) or a raw grayscale array -> the exact training preprocessing.

Uses cxrlt's own image module (copied beside this file as cxrlt_images.py) and the bundle's two preprocessing
contracts (size, channels, mean/std, percentiles, pixel limit: the ``task1_preprocess`` / ``zeroshot_preprocess``
parameters), so serving and training cannot drift.
Per item: a bad item gets an ERROR string; a request whose items are all bad gets INVALID_ARGUMENT.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils
from _common import bytes_array, invalid, parameters
from cxrlt_images import ImageReadError, PreprocessConfig, decode_image, preprocess_array


class TritonPythonModel:
    def initialize(self, args):
        p = parameters(args)
        self.task1 = PreprocessConfig.from_dict(json.loads(p["task1_preprocess"]))
        self.zs = PreprocessConfig.from_dict(json.loads(p["zeroshot_preprocess"]))
        self.max_pixels = min(self.task1.max_pixels, self.zs.max_pixels)

    def _items(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        pixels = pb_utils.get_input_tensor_by_name(request, "PIXELS")
        if (encoded is None) == (pixels is None):
            raise ImageReadError("send exactly one of IMAGE (encoded PNG/DICOM bytes) or PIXELS (raw grayscale)")
        if encoded is not None:
            return [("IMAGE", row.reshape(-1)[0]) for row in encoded.as_numpy()]
        arr = pixels.as_numpy()
        if arr.ndim != 3:
            raise ImageReadError(f"PIXELS must be (batch, height, width), got shape {arr.shape}")
        return [("PIXELS", a) for a in arr]

    def _one(self, kind, item, index):
        source = f"item {index}"
        if kind == "IMAGE":
            img = decode_image(bytes(item), source, self.max_pixels, self.task1.modalities)
        else:
            if item.size == 0 or min(item.shape) < 8:
                raise ImageReadError(f"{source}: image is too small ({item.shape})")
            if item.size > self.max_pixels:
                raise ImageReadError(f"{source}: image is {item.shape[1]}x{item.shape[0]}, over the limit of "
                                     f"{self.max_pixels} pixels")
            img = item
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
            for i, (kind, item) in enumerate(items):
                try:
                    t1[i], zs[i] = self._one(kind, item, i)
                    errors.append("")
                except ImageReadError as exc:
                    errors.append(str(exc))
                except Exception as exc:  # any other failure on one item (codec, tag, OpenCV) is that item's error
                    errors.append(f"item {i}: cannot read image ({type(exc).__name__}: {exc})")
            if all(errors):
                responses.append(invalid("; ".join(errors)))
                continue
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("TASK1_INPUT", t1), pb_utils.Tensor("ZS_INPUT", zs),
                pb_utils.Tensor("ERROR", bytes_array(errors))]))
        return responses
