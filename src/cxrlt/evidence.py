"""Signed gate evidence: what the registration step attests about a registered version, verifiable by anyone who
holds the public key and forgeable by no one who does not hold the private one.

Every pipeline step can write to MLflow (runs, tags), so a tag that says "passed" proves nothing by itself. The
registration step, the only holder of the Ed25519 signing key (a Secret mounted there alone), signs a statement that
binds the registered model, the version, the gate's evidence, the metrics, the bundle manifest's digest and the run;
``serve build`` and promotion verify it with the public key (a ConfigMap) and refuse a version whose tags no longer
match what was signed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cxrlt.errors import CxrltError, InvalidInputError
from cxrlt.platform import EVIDENCE_SIGNING_KEY_FILE, EVIDENCE_VERIFY_KEY_FILE

#: the PEM private key, or the path of its file (the registration step only)
SIGNING_KEY_ENV = "CXRLT_EVIDENCE_SIGNING_KEY"
#: the PEM public key, or the path of its file (serve build, promotion, anyone auditing)
VERIFY_KEY_ENV = "CXRLT_EVIDENCE_VERIFY_KEY"
PEM_BEGIN = "-----BEGIN"
SIGNING_KEY_FILE, VERIFY_KEY_FILE = EVIDENCE_SIGNING_KEY_FILE, EVIDENCE_VERIFY_KEY_FILE
#: the version tags the statement is made of, besides the model name and version
SIGNED_TAGS = ("gate_evidence", "metrics", "bundle_manifest_sha256", "run_id")


class EvidenceError(CxrltError, PermissionError):
    """A version's evidence is unsigned, signed by another key, or no longer what was signed."""


def statement(name: str, version: str, tags: dict[str, str]) -> bytes:
    """The canonical bytes that are signed: name, version and the signed tags exactly as stored."""
    missing = [k for k in SIGNED_TAGS if k not in tags]
    if missing:
        raise EvidenceError(f"{name} version {version} lacks the tags {missing} that its evidence signature covers")
    body = {"registered_model": name, "version": str(version), **{k: tags[k] for k in SIGNED_TAGS}}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def generate_keys(out_dir: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 pair: the private key readable by its owner only, the public key by anyone."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / SIGNING_KEY_FILE, out / VERIFY_KEY_FILE
    if private.exists():
        raise InvalidInputError(f"{private} exists; a new pair would invalidate every signature made with it. "
                                "Choose another --out")
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def load_key(source: str | Path, private: bool):
    """A key from PEM text or from the file it names."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    path = "the key given" if str(source).lstrip().startswith(PEM_BEGIN) else str(source)
    try:
        data = key_text(source).encode()
    except OSError as exc:
        raise InvalidInputError(f"{path}: cannot read the key ({exc.strerror})") from None
    try:
        key = (serialization.load_pem_private_key(data, None) if private
               else serialization.load_pem_public_key(data))
    except ValueError as exc:
        raise InvalidInputError(f"{path}: not a PEM {'private' if private else 'public'} key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise InvalidInputError(f"{path}: an Ed25519 key is expected (cxrlt registry keygen makes one)")
    return key


def key_id(public_key) -> str:
    """A short fingerprint of a public key (sha256 of its raw bytes), to say which key signed."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def key_text(source: str | Path) -> str:
    """The PEM text of a key given as text or as a file (to hand it to a process that cannot see the file)."""
    text = str(source)
    return text if text.lstrip().startswith(PEM_BEGIN) else Path(text).read_text()


def signing_key() -> str | None:
    """$CXRLT_EVIDENCE_SIGNING_KEY: PEM text or a file path; None when unset."""
    return os.environ.get(SIGNING_KEY_ENV) or None


def verify_key() -> str | None:
    """$CXRLT_EVIDENCE_VERIFY_KEY: PEM text or a file path; None when unset."""
    return os.environ.get(VERIFY_KEY_ENV) or None


def sign(name: str, version: str, tags: dict[str, str], private_key: str | Path) -> dict[str, str]:
    """The tags to add to the version: the signature of its statement and the signing key's id."""
    key = load_key(private_key, private=True)
    signature = key.sign(statement(name, version, tags))
    return {"evidence_signature": base64.b64encode(signature).decode(), "evidence_key_id": key_id(key.public_key())}


def verify(name: str, version: str, tags: dict[str, str], public_key: str | Path) -> None:
    """Raise :class:`EvidenceError` unless the version's tags carry a valid signature of their statement."""
    from cryptography.exceptions import InvalidSignature

    key = load_key(public_key, private=False)
    signature = tags.get("evidence_signature")
    if not signature:
        raise EvidenceError(f"{name} version {version} carries no evidence signature: it was not registered by the "
                            "registration step (or before signing existed); refused")
    if tags.get("evidence_key_id") not in (None, key_id(key)):
        raise EvidenceError(f"{name} version {version} was signed with key {tags['evidence_key_id']}, not with "
                            f"the verifying key {key_id(key)}; refused")
    try:
        key.verify(base64.b64decode(signature), statement(name, version, tags))
    except (InvalidSignature, ValueError):
        raise EvidenceError(f"{name} version {version}: its gate evidence, metrics, manifest digest or run id differ "
                            "from what the registration step signed; refused") from None
