"""A small client for hospital integrations: send PNG/DICOM files to the ``cxr`` model over Triton gRPC.

Sync (:class:`CXRClient`) and asyncio (:class:`AsyncCXRClient`) variants; batching, per-call timeouts and retries
with backoff on UNAVAILABLE (server starting, draining or restarting). Results are keyed by class name, which every
response carries (the model configuration is restricted on a production server), never by position. A server that
is overloaded refuses requests beyond its queue with UNAVAILABLE: retried here with backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlt.errors import InvalidInputError, NotFoundError, OperationError

MODEL = "cxr"
#: gRPC statuses that say the server could not answer now (down, restarting, overloaded, too slow), as opposed to an
#: answer about the image: the caller may send the same image again later.
TRANSIENT_STATUSES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED")


class ServerUnavailableError(OperationError):
    """The server could not be reached or could not answer now; the same request may succeed later."""
OUTPUTS = ("KNOWN_PROBS", "UNSEEN_PROBS", "VIEW", "VIEW_CONFIDENCE", "MODEL_VERSION", "ERROR", "KNOWN_CLASSES",
           "UNSEEN_CLASSES", "KNOWN_BANDS")


@dataclass
class Finding:
    name: str
    probability: float
    kind: str  # "known" or "unseen"


@dataclass
class Result:
    source: str
    view: str
    view_confidence: float
    model_version: str
    known: dict[str, float]
    unseen: dict[str, float]
    error: str = ""

    def findings(self) -> list[Finding]:
        rows = [Finding(n, p, "known") for n, p in self.known.items()]
        rows += [Finding(n, p, "unseen") for n, p in self.unseen.items()]
        return sorted(rows, key=lambda f: -f.probability)

    def to_dict(self) -> dict:
        return {"source": self.source, "view": self.view, "view_confidence": self.view_confidence,
                "model_version": self.model_version, "known": self.known, "unseen": self.unseen,
                "error": self.error}


def failed(source: str, error: str) -> Result:
    """A Result for an item that could not be scored (no probabilities; ``error`` says why)."""
    return Result(source, "", 0.0, "", {}, {}, error)


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _inputs(module, payloads: Sequence[bytes]):
    arr = np.array([[p] for p in payloads], dtype=np.object_)
    tensor = module.InferInput("IMAGE", list(arr.shape), "BYTES")
    tensor.set_data_from_numpy(arr)
    return [tensor], [module.InferRequestedOutput(o) for o in OUTPUTS]


def _pixel_inputs(module, pixels: np.ndarray, bits: int | None):
    """One raw grayscale image as ``PIXELS`` (1, H, W) float32 with its bit depth (``BITS``: 8 or 16 for the integer
    values of an 8/16-bit image, scaled like a PNG of that depth; None for real values, percentile-clipped)."""
    arr = np.asarray(pixels, dtype=np.float32)[None]
    tensor = module.InferInput("PIXELS", list(arr.shape), "FP32")
    tensor.set_data_from_numpy(arr)
    inputs = [tensor]
    if bits:
        depth = np.array([[bits]], dtype=np.int32)
        inputs.append(module.InferInput("BITS", [1, 1], "INT32"))
        inputs[-1].set_data_from_numpy(depth)
    return inputs, [module.InferRequestedOutput(o) for o in OUTPUTS]


def _names(response) -> tuple[list[str], list[str], dict[str, str]]:
    """Known and unseen class names, in the probabilities' order, and the known classes' bands: every response
    carries them, so a client never needs the model config (restricted on a production server)."""
    known = [_decode(v) for v in response.as_numpy("KNOWN_CLASSES")[0]]
    unseen = [_decode(v) for v in response.as_numpy("UNSEEN_CLASSES")[0]]
    bands = dict(zip(known, (_decode(v) for v in response.as_numpy("KNOWN_BANDS")[0]), strict=True))
    return known, unseen, bands


def _results(response, sources: Sequence[str]) -> list[Result]:
    k, u = response.as_numpy("KNOWN_PROBS"), response.as_numpy("UNSEEN_PROBS")
    known, unseen, _ = _names(response)
    out = []
    for i, src in enumerate(sources):
        err = _decode(response.as_numpy("ERROR")[i][0])
        out.append(Result(src, _decode(response.as_numpy("VIEW")[i][0]),
                          float(response.as_numpy("VIEW_CONFIDENCE")[i][0]),
                          _decode(response.as_numpy("MODEL_VERSION")[i][0]),
                          {} if err else {n: float(k[i, j]) for j, n in enumerate(known)},
                          {} if err else {n: float(u[i, j]) for j, n in enumerate(unseen)}, err))
    return out


@dataclass(frozen=True)
class TLSOptions:
    """gRPC TLS for a client: the CA that signed the server's certificate; with ``cert`` and ``key``, mutual TLS."""

    ca: str | Path
    cert: str | Path | None = None
    key: str | Path | None = None

    def client_kwargs(self) -> dict:
        """tritonclient's arguments (it reads the PEM files itself)."""
        if bool(self.cert) != bool(self.key):
            raise InvalidInputError("mutual TLS needs both a client certificate and its key")
        for path in (self.ca, self.cert, self.key):
            if path and not Path(path).is_file():
                raise NotFoundError(f"TLS file not found: {path}")
        return {"ssl": True, "root_certificates": str(self.ca), "private_key": str(self.key) if self.key else None,
                "certificate_chain": str(self.cert) if self.cert else None}


class CXRClient:
    """Synchronous gRPC client. ``timeout`` is per call (seconds); UNAVAILABLE is retried ``retries`` times.
    ``tls`` connects over TLS (the server started with a certificate: ``cxrlt serve up --tls-cert ...``);
    ``model`` is the entry to call (``shadow_cxr``: the challenger a shadow-scoring server serves beside it)."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5, batch_size: int = 8,
                 tls: TLSOptions | None = None, model: str = MODEL):
        import tritonclient.grpc as grpcclient

        self.model = model
        self._mod = grpcclient
        self.client = grpcclient.InferenceServerClient(url, **(tls.client_kwargs() if tls else {}))
        self.url = url
        self.timeout, self.retries, self.backoff, self.batch_size = timeout, retries, backoff, batch_size
        self._served: tuple[list[str], list[str], dict[str, str]] | None = None

    def classes(self) -> tuple[list[str], list[str]]:
        """(known, unseen) class names as the server last answered them (empty before the first answer)."""
        return (self._served[0], self._served[1]) if self._served else ([], [])

    def bands(self) -> dict[str, str]:
        """Head/medium/tail band of each known class (training prevalence), as served with the model."""
        return dict(self._served[2]) if self._served else {}

    def _infer(self, payloads: Sequence[bytes] | None = None, request=None):
        from tritonclient.utils import InferenceServerException

        inputs, outputs = request or _inputs(self._mod, payloads)
        for attempt in range(self.retries + 1):
            try:
                return self.client.infer(self.model, inputs, outputs=outputs, client_timeout=self.timeout)
            except InferenceServerException as exc:
                if "UNAVAILABLE" not in str(exc.status()) or attempt == self.retries:
                    raise
                time.sleep(self.backoff * 2**attempt)
        raise RuntimeError("unreachable")

    def infer_bytes(self, payloads: Sequence[bytes], sources: Sequence[str] | None = None) -> list[Result]:
        """One Result per payload, in order. A chunk the server refuses as a whole (every item bad) or cannot
        answer gives each of its items that error; the other chunks are still sent."""
        from tritonclient.utils import InferenceServerException

        sources = list(sources or [f"item {i}" for i in range(len(payloads))])
        results = []
        for i in range(0, len(payloads), self.batch_size):
            chunk, names = payloads[i : i + self.batch_size], sources[i : i + self.batch_size]
            try:
                response = self._infer(chunk)
                self._served = _names(response)
                results += _results(response, names)
            except InferenceServerException as exc:
                results += [failed(src, exc.message() or str(exc)) for src in names]
        return results

    def infer_one(self, payload: bytes, source: str) -> Result:
        """One encoded image, for callers that keep their own queue (the DICOM gateway): a refused image is a Result
        with its error; a server that cannot answer now raises :class:`ServerUnavailableError` (retry later)."""
        from tritonclient.utils import InferenceServerException

        try:
            response = self._infer([payload])
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if not status or any(s in status for s in TRANSIENT_STATUSES):
                raise ServerUnavailableError(f"{self.url}: {status or 'no status'}: {exc.message() or exc}") from None
            return failed(source, exc.message() or str(exc))
        self._served = _names(response)
        return _results(response, [source])[0]

    def infer_pixels(self, images: Sequence[np.ndarray], bits: int | None = None,
                     sources: Sequence[str] | None = None) -> list[Result]:
        """Raw 2-D grayscale arrays, one request each. ``bits`` 8 or 16 when the values are an 8/16-bit image's
        integers (then they are scaled exactly like the PNG of that image); None for real values."""
        from tritonclient.utils import InferenceServerException

        sources = list(sources or [f"item {i}" for i in range(len(images))])
        results = []
        for image, src in zip(images, sources, strict=True):
            try:
                response = self._infer(request=_pixel_inputs(self._mod, image, bits))
                self._served = _names(response)
                results += _results(response, [src])
            except InferenceServerException as exc:
                results.append(failed(src, exc.message() or str(exc)))
        return results

    def infer_files(self, paths: Sequence[str | Path]) -> list[Result]:
        """Like :meth:`infer_bytes` for files; a missing or unreadable file is that item's error (not sent)."""
        readable, results = {}, {}
        for i, p in enumerate(paths):
            try:
                readable[i] = Path(p).read_bytes()
            except OSError as exc:
                results[i] = failed(str(p), f"{p}: cannot read file ({exc.strerror or exc})")
        sent = self.infer_bytes(list(readable.values()), [str(paths[i]) for i in readable])
        results.update(zip(readable, sent, strict=True))
        return [results[i] for i in range(len(paths))]

    def close(self) -> None:
        self.client.close()


class AsyncCXRClient:
    """asyncio variant: ``await client.infer_files(paths)`` sends the batches concurrently."""

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 3, backoff: float = 0.5, batch_size: int = 8,
                 tls: TLSOptions | None = None):
        import tritonclient.grpc.aio as aioclient

        self._mod = aioclient
        self.client = aioclient.InferenceServerClient(url, **(tls.client_kwargs() if tls else {}))
        self.timeout, self.retries, self.backoff, self.batch_size = timeout, retries, backoff, batch_size

    async def _infer(self, payloads):
        from tritonclient.utils import InferenceServerException

        inputs, outputs = _inputs(self._mod, payloads)
        for attempt in range(self.retries + 1):
            try:
                return await self.client.infer(MODEL, inputs, outputs=outputs, client_timeout=self.timeout)
            except InferenceServerException as exc:
                if "UNAVAILABLE" not in str(exc.status()) or attempt == self.retries:
                    raise
                await asyncio.sleep(self.backoff * 2**attempt)
        raise RuntimeError("unreachable")

    async def infer_files(self, paths: Sequence[str | Path]) -> list[Result]:
        payloads = [Path(p).read_bytes() for p in paths]
        chunks = [(i, payloads[i : i + self.batch_size]) for i in range(0, len(payloads), self.batch_size)]
        responses = await asyncio.gather(*(self._infer(c) for _, c in chunks))
        results = []
        for (i, chunk), response in zip(chunks, responses, strict=True):
            results += _results(response, [str(p) for p in paths[i : i + len(chunk)]])
        return results

    async def close(self) -> None:
        await self.client.close()
