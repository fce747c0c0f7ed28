"""A DICOM gateway between the PACS and the served model: images in by C-STORE, findings out as DICOM SR.

    modality / PACS --C-STORE--> gateway (SCP) --gRPC--> Triton cxr --> SR (serving.dicom_sr) --C-STORE/STOW-RS--> PACS

- **Acceptance**: only the configured calling AE titles may associate, and only to the gateway's AE title. Every
  storage SOP class and transfer syntax is accepted on the wire (a PACS routes whole studies), then each image is
  checked by the server's own acceptance policy (``cxrlt.data.images.check_dicom_acceptance``: CR/DX, one grayscale
  frame): anything else is answered with success, logged with the reason, and gets no report.
- **Nothing lost**: an accepted image is written to an on-disk spool (``incoming/``) before the C-STORE is
  answered; its SR is written to ``outbox/`` before the image is removed; an SR is removed only after the
  destination confirmed it. A server or destination that cannot be reached is retried with exponential backoff, and
  a gateway restarted on the same spool continues where it stopped (at worst an image is scored twice, never lost).
  The spool is bounded: when ``max_queue`` items wait, new images are refused with 0xA700 (out of resources), which
  the sender retries, instead of filling the disk.
- **No PHI in the logs**: images are named by a digest of their SOP Instance UID; names, IDs, dates and UIDs are
  never logged (pynetdicom's, highdicom's and pydicom's loggers are kept at WARNING, where they print no
  datasets).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cxrlt.data.images import DEFAULT_MODALITIES, ImageReadError, check_dicom_acceptance
from cxrlt.errors import InvalidInputError, OperationError

log = logging.getLogger("cxrlt.gateway")

#: Libraries that log UIDs or dataset contents below WARNING: kept at WARNING so no PHI reaches the logs.
QUIET_LOGGERS = ("pynetdicom", "highdicom", "pydicom", "dicomweb_client")
#: DIMSE statuses the gateway answers with.
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
#: Retries of an item whose scoring failed for a reason other than the server being unreachable (an internal error)
#: before it is set aside in ``failed/`` (kept, and logged): one bad item must not block the queue for ever.
MAX_ITEM_ATTEMPTS = 5


class Destination(BaseModel):
    """Where SRs go: a DICOM node (``ae_title@host:port``, C-STORE) or a DICOMweb service (``stow_url``, STOW-RS)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    stow_url: str | None = None

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``AET@HOST:PORT`` or an ``http(s)://`` DICOMweb base URL."""
        if text.startswith(("http://", "https://")):
            return cls(stow_url=text)
        aet, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and aet and host and port.isdigit()):
            raise InvalidInputError(f"destination {text!r}: expected AE_TITLE@HOST:PORT or a DICOMweb http(s) URL")
        return cls(ae_title=_ae_title(aet), host=host, port=int(port))

    def __str__(self) -> str:
        return self.stow_url or f"{self.ae_title}@{self.host}:{self.port}"


def _ae_title(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 16 or not value.isascii() or "\\" in value:
        raise InvalidInputError(f"AE title {value!r}: 1 to 16 ASCII characters, no backslash")
    return value


class GatewayConfig(BaseModel):
    """Everything ``cxrlt gateway`` is told; validated before anything listens."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    ae_title: str = "CXRLT"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling: tuple[str, ...]
    triton_url: str = "127.0.0.1:8001"
    tls: object | None = None  # serving.client.TLSOptions
    destination: Destination
    spool: Path
    max_queue: int = Field(default=1000, ge=1)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    thresholds: dict[str, float] = {}
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    timeout_s: float = Field(default=30.0, gt=0)
    backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)
    institution_name: str | None = None

    @field_validator("ae_title")
    @classmethod
    def _check_title(cls, value: str) -> str:
        return _ae_title(value)

    @field_validator("allowed_calling")
    @classmethod
    def _check_calling(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise InvalidInputError("name the calling AE titles allowed to send images (--allow-calling): a gateway "
                                    "that takes images from any node would report on whatever reaches it")
        return tuple(_ae_title(v) for v in value)


def image_key(sop_instance_uid: str) -> str:
    """What the logs call an image: a digest of its SOP Instance UID (not PHI, still traceable by whoever has the
    image)."""
    return hashlib.sha256(str(sop_instance_uid).encode()).hexdigest()[:12]


@dataclass
class GatewayStats:
    """What one run of the gateway did (printed when it stops): images received, refused (with the reasons),
    refused for a full spool, scored, reports stored, retries while Triton or the destination was down, set aside."""

    received: int = 0
    refused: int = 0
    queue_full: int = 0
    scored: int = 0
    reported: int = 0
    server_retries: int = 0
    send_retries: int = 0
    set_aside: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class Gateway:
    """The C-STORE SCP and its worker. ``start()`` returns once it listens; ``stop()`` stops both."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.stats = GatewayStats()
        self.incoming, self.outbox, self.failed = (config.spool / d for d in ("incoming", "outbox", "failed"))
        try:
            for folder in (self.incoming, self.outbox, self.failed):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OperationError(f"spool {config.spool}: cannot create {exc.filename} ({exc.strerror}); the gateway "
                                 "needs a writable spool (a persistent volume in a cluster)") from None
        for stale in [*self.incoming.glob(".*.tmp"), *self.outbox.glob(".*.tmp")]:
            stale.unlink()  # a write the last run did not finish: its C-STORE was never answered with success
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._server = None
        self._client = None
        self._lock = threading.Lock()

    # ---- receiving ----------------------------------------------------------------------------------------------
    def start(self) -> Gateway:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        for library in QUIET_LOGGERS:
            logging.getLogger(library).setLevel(logging.WARNING)
        ae = AE(ae_title=self.config.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.config.allowed_calling)
        try:
            self._server = ae.start_server((self.config.host, self.config.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        except OSError as exc:
            raise OperationError(f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror}") from None
        self.port = self._server.server_address[1]
        self._worker = threading.Thread(target=self._work, name="cxrlt-gateway-worker", daemon=True)
        self._worker.start()
        waiting = self.queued()
        log.info("listening as %s on %s:%d; %d item(s) waiting in the spool; reports go to %s",
                 self.config.ae_title, self.config.host, self.port, waiting, self.config.destination)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.shutdown()
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
        if self._client is not None:
            self._client.close()

    def queued(self) -> int:
        return sum(1 for _ in self.incoming.glob("*.dcm")) + sum(1 for _ in self.outbox.glob("*.dcm"))

    def _count_refusal(self, reason: str) -> None:
        with self._lock:
            self.stats.refused += 1
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1

    def _on_store(self, event) -> int:
        calling = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            key = image_key(ds.get("SOPInstanceUID", ""))
        except Exception as exc:  # a dataset pydicom cannot parse
            log.warning("refused an unreadable dataset from %s: %s", calling, type(exc).__name__)
            self._count_refusal("unreadable")
            return CANNOT_UNDERSTAND
        with self._lock:
            self.stats.received += 1
        try:
            check_dicom_acceptance(ds, key, self.config.modalities)
        except ImageReadError as exc:
            log.info("image %s from %s: no report: %s", key, calling, exc)
            self._count_refusal(str(exc).split(": ", 1)[-1])
            return SUCCESS  # stored as far as the sender is concerned: the PACS keeps the image, we report nothing
        waiting = self.queued()
        if waiting >= self.config.max_queue:
            log.warning("image %s from %s refused for now: %d items wait in the spool (max %d)", key, calling,
                        waiting, self.config.max_queue)
            with self._lock:
                self.stats.queue_full += 1
            return OUT_OF_RESOURCES
        name = f"{time.time_ns():020d}-{key}.dcm"
        _write_atomically(self.incoming / name, event.encoded_dataset())
        log.info("image %s (%s) from %s queued", key, ds.get("Modality", ""), calling)
        self._wake.set()
        return SUCCESS

    # ---- scoring and sending ------------------------------------------------------------------------------------
    def _work(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                progressed = self._send_outbox() | self._score_next()
                failures = 0
            except _Unreachable as exc:
                failures += 1
                delay = min(self.config.max_backoff_s, self.config.backoff_s * 2 ** (failures - 1))
                log.warning("%s; retrying in %.1f s (%d item(s) waiting)", exc, delay, self.queued())
                self._stop.wait(delay)
                continue
            if not progressed:
                self._wake.wait(1.0)
                self._wake.clear()

    def _oldest(self, folder: Path) -> Path | None:
        items = sorted(folder.glob("*.dcm"))
        return items[0] if items else None

    def _score_next(self) -> bool:
        import pydicom
        from pydicom.filebase import DicomBytesIO

        from serving.client import CXRClient, ServerUnavailableError
        from serving.dicom_sr import build_sr

        item = self._oldest(self.incoming)
        if item is None:
            return False
        key = item.stem.split("-", 1)[-1]
        if self._client is None:
            self._client = CXRClient(self.config.triton_url, timeout=self.config.timeout_s, retries=0,
                                     tls=self.config.tls)
        try:
            result = self._client.infer_one(item.read_bytes(), key)
        except ServerUnavailableError as exc:
            with self._lock:
                self.stats.server_retries += 1
            raise _Unreachable(f"image {key}: the model server cannot answer ({exc})") from None
        except Exception as exc:  # noqa: BLE001 - anything else: count attempts, then set the item aside
            self._attempt_failed(item, key, f"{type(exc).__name__}: {exc}")
            return True
        if result.error:
            log.info("image %s: no report: the server refused it: %s", key, result.error.split(": ", 1)[-1])
            self._count_refusal(result.error.split(": ", 1)[-1])
            item.unlink()
            return True
        try:
            image = pydicom.dcmread(item, stop_before_pixels=True)
            sr = build_sr(image, result.known, result.unseen, result.model_version,
                          threshold=self.config.threshold, thresholds=self.config.thresholds,
                          institution_name=self.config.institution_name)
        except Exception as exc:  # noqa: BLE001 - a report that cannot be written: keep the image, say why
            self._attempt_failed(item, key, f"cannot write the report: {exc}", attempts=1)
            return True
        encoded = DicomBytesIO()
        sr.save_as(encoded, enforce_file_format=True)
        _write_atomically(self.outbox / item.name, encoded.getvalue())
        item.unlink()
        with self._lock:
            self.stats.scored += 1
        log.info("image %s scored by %s (view %s): report queued", key, result.model_version, result.view)
        return True

    def _attempt_failed(self, item: Path, key: str, why: str, attempts: int = MAX_ITEM_ATTEMPTS) -> None:
        marker = item.with_name(f".{item.name}.attempts")
        count = int(marker.read_text()) + 1 if marker.exists() else 1
        if count >= attempts:
            os.replace(item, self.failed / item.name)
            (self.failed / f"{item.name}.reason.txt").write_text(why + "\n")
            marker.unlink(missing_ok=True)
            log.error("image %s set aside in %s after %d attempt(s): %s", key, self.failed, count, why)
            with self._lock:
                self.stats.set_aside += 1
        else:
            marker.write_text(str(count))
            log.warning("image %s: attempt %d of %d failed: %s", key, count, attempts, why)

    def _send_outbox(self) -> bool:
        sent = False
        while (report := self._oldest(self.outbox)) is not None and not self._stop.is_set():
            key = report.stem.split("-", 1)[-1]
            try:
                self._send(report)
            except _Unreachable as exc:
                with self._lock:
                    self.stats.send_retries += 1
                raise _Unreachable(f"report of image {key}: {exc}") from None
            report.unlink()
            with self._lock:
                self.stats.reported += 1
            log.info("report of image %s stored at %s", key, self.config.destination)
            sent = True
        return sent

    def _send(self, report: Path) -> None:
        import pydicom

        ds = pydicom.dcmread(report)
        destination = self.config.destination
        if destination.stow_url:
            return _stow(destination.stow_url, ds)
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom import AE
        from pynetdicom.sop_class import Comprehensive3DSRStorage

        ae = AE(ae_title=self.config.ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_s
        ae.add_requested_context(Comprehensive3DSRStorage, ExplicitVRLittleEndian)
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            raise _Unreachable(f"{destination} did not accept an association")
        try:
            status = assoc.send_c_store(ds)
        finally:
            assoc.release()
        code = int(status.Status) if status and "Status" in status else None
        if code is None:
            raise _Unreachable(f"{destination} did not answer the C-STORE")
        if code != SUCCESS and not 0xB000 <= code <= 0xBFFF:  # warnings (coercion ...) are stored too
            raise _Unreachable(f"{destination} answered the C-STORE with status 0x{code:04X}")


def _stow(url: str, ds) -> None:
    import requests
    from dicomweb_client.api import DICOMwebClient

    try:
        DICOMwebClient(url=url).store_instances([ds])
    except (requests.RequestException, OSError) as exc:
        raise _Unreachable(f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}") from None


class _Unreachable(OperationError):
    """The model server or the destination cannot be reached now: retried with backoff, nothing dropped."""


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(config: GatewayConfig, until: threading.Event | None = None) -> GatewayStats:
    """Serve until ``until`` is set (the CLI sets it on SIGTERM/SIGINT); return the counts."""
    gateway = Gateway(config).start()
    until = until or threading.Event()
    try:
        until.wait()
    finally:
        gateway.stop()
    return gateway.stats


__all__ = ["Destination", "Gateway", "GatewayConfig", "GatewayStats", "image_key", "run"]
