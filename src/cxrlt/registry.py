"""MLflow model registry for the served bundle: registration with lineage, challenger/champion aliases with an audit
trail, promotion by paired bootstrap on the same evaluation set, rollback, and download for serving.

The bundle (ONNX files, ensemble weights, prompt embeddings, label order, preprocessing config) is logged as one
self-contained ``mlflow.pyfunc`` model (:mod:`cxrlt.pyfunc_bundle`: both tasks through :mod:`cxrlt.scoring`, pinned
requirements, a signature, no cxrlt needed to load it), so ``models:/cxrlt-bundle@champion`` is both the serving
source and a loadable model. A failed gate never reaches this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrlt import evidence
from cxrlt.errors import CxrltError
from cxrlt.platform import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    DRIFT_REFERENCE_JSON,
    GROUPS_CSV,
    PROMOTION_MARGIN,
    REGISTERED_MODEL,
    REPORT_HTML,
)

if TYPE_CHECKING:  # the subgroup metrics import torch: only promotion needs them
    from cxrlt.shadow import ShadowRequirement
    from cxrlt.subgroups import SubgroupGate

EVAL_ARTIFACT = "evaluation"
#: where a version's model card lives in its registration run
MODEL_CARD_ARTIFACT = "model_card"
#: the subgroup metrics the evaluation writes beside its predictions (logged with them)
SUBGROUPS_JSON = "subgroups.json"
MANIFEST_ARTIFACT = "bundle_manifest.json"
#: a promotion holds this registered model (``<name>.promotion-lease``) while it decides and moves the aliases: MLflow
#: creates a name once, so of two promoters that start together exactly one goes on
LEASE_SUFFIX = ".promotion-lease"
#: a lease older than this (a promoter that died) may be broken by the next promotion
LEASE_TTL_S = 900.0

log = logging.getLogger(__name__)


def bundle_manifest(bundle_dir: str | Path) -> dict[str, str]:
    """sha256 of every file of a served bundle, keyed by its path inside the bundle."""
    from cxrlt.weights import sha256_file

    root = Path(bundle_dir)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def verify_bundle(bundle_dir: str | Path, manifest: dict[str, str], source: str = "the registry") -> None:
    """Refuse a bundle whose files differ from the manifest recorded at registration (names every difference)."""
    actual = bundle_manifest(bundle_dir)
    changed = sorted(k for k in manifest.keys() & actual.keys() if manifest[k] != actual[k])
    missing, extra = sorted(manifest.keys() - actual.keys()), sorted(actual.keys() - manifest.keys())
    if changed or missing or extra:
        raise RegistryError(f"{source}: the bundle does not match the manifest recorded when the gate passed: "
                            f"changed {changed}, missing {missing}, unexpected {extra}; refusing to serve it")


class RegistryError(CxrltError, RuntimeError):
    """A registry operation was refused; the message says why."""


#: the model-from-code file that MLflow stores as the model (it imports no cxrlt; see its docstring)
PYFUNC_MODEL_FILE = Path(__file__).with_name("pyfunc_bundle.py")
#: what the logged model needs to run, pinned to the versions it was logged with (never cxrlt itself)
PYFUNC_REQUIREMENTS = ("numpy", "pandas", "onnxruntime", "opencv-python-headless", "pydicom", "pylibjpeg",
                       "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "python-gdcm")


def pyfunc_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in PYFUNC_REQUIREMENTS]


def pyfunc_signature(bundle: dict):
    """Input: ``image`` (PNG/DICOM bytes) or ``image_path``; output: every finding by class name, view, confidence."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    classes = [*bundle["known_classes"], *(bundle["zeroshot"]["classes"] if bundle["zeroshot"] else [])]
    inputs = Schema([ColSpec("binary", "image", required=False), ColSpec("string", "image_path", required=False)])
    outputs = Schema([*(ColSpec("double", c) for c in classes), ColSpec("string", "view"),
                      ColSpec("double", "view_confidence")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _pyfunc_arguments(bundle_dir: str | Path, code_dir: Path) -> dict:
    """The model-from-code file (:mod:`cxrlt.pyfunc_bundle`), the two modules it runs copied under the names it
    imports, the bundle, pinned requirements and the signature: everything ``load_model`` needs without cxrlt."""
    import shutil

    import cxrlt.data.images
    import cxrlt.scoring
    from cxrlt.export import load_bundle

    code_dir.mkdir(parents=True, exist_ok=True)
    code = [code_dir / "cxrlt_scoring.py", code_dir / "cxrlt_images.py"]
    shutil.copyfile(cxrlt.scoring.__file__, code[0])
    shutil.copyfile(cxrlt.data.images.__file__, code[1])
    bundle = load_bundle(bundle_dir)
    return {"python_model": str(PYFUNC_MODEL_FILE), "artifacts": {"bundle": str(bundle_dir)},
            "code_paths": [str(p) for p in code], "pip_requirements": pyfunc_requirements(),
            "signature": pyfunc_signature(bundle)}


@contextlib.contextmanager
def _pyfunc_model(bundle_dir: str | Path):
    """The arguments of :func:`_pyfunc_arguments`, with its code folder importable while MLflow loads the model file
    to check it (as ``load_model`` will make it from ``code_paths``)."""
    with tempfile.TemporaryDirectory() as tmp:
        arguments = _pyfunc_arguments(bundle_dir, Path(tmp))
        sys.path.insert(0, tmp)
        try:
            yield arguments
        finally:
            sys.path.remove(tmp)
            for module in ("cxrlt_scoring", "cxrlt_images"):
                sys.modules.pop(module, None)


def save_bundle_model(bundle_dir: str | Path, path: str | Path) -> Path:
    """Write the bundle as a local MLflow pyfunc model directory (what registration logs)."""
    import mlflow.pyfunc

    with _pyfunc_model(bundle_dir) as arguments:
        mlflow.pyfunc.save_model(str(path), **arguments)
    return Path(path)


def _client(tracking_uri: str | None):
    import mlflow
    from mlflow import MlflowClient

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    return MlflowClient()


AUDIT_EXPERIMENT = "cxrlt-registry-audit"
#: the experiment of the registration runs (the logged pyfunc models the versions point at)
REGISTRY_EXPERIMENT = "cxrlt-registry"
_UNSET = object()


def _audit(client, name: str, entry: dict) -> None:
    """Append one record to the audit trail: one MLflow run per record (append-only, never truncated). A move is
    recorded twice: its intent before the alias changes, its outcome (done or failed) after."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(AUDIT_EXPERIMENT)
    tags = {"registered_model": name, "moved_at_ns": str(time.time_ns()),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **{k: "" if v is None else str(v) for k, v in entry.items()}}
    run = client.create_run(experiment_id, run_name=f"{name}:{entry['alias']}", tags=tags)
    client.set_terminated(run.info.run_id)


def audit_trail(name: str = REGISTERED_MODEL, tracking_uri: str | None = None, client=None) -> list[dict]:
    """Every alias move of ``name``, oldest first (``from``/``to`` None where the alias was unset)."""
    client = client or _client(tracking_uri)
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        return []
    runs, token = [], None
    while True:
        page = client.search_runs([experiment.experiment_id], f"tags.registered_model = '{name}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    keys = ("alias", "from", "to", "reason", "time", "phase", "move_id", "actor", "evidence")
    moves = sorted((r.data.tags for r in runs), key=lambda t: int(t["moved_at_ns"]))
    return [{k: (t.get(k) or None) for k in keys} for t in moves]


def _actor() -> str:
    """Who moves an alias: the MLflow account (its role) and the host, for the audit trail."""
    return f"{os.environ.get('MLFLOW_TRACKING_USERNAME', 'anonymous')}@{socket.gethostname()}"


def _alias_version(client, name: str, alias: str) -> str | None:
    """The version an alias points at; None only when MLflow says it does not exist (any other error aborts)."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        # MLflow answers an unset alias with INVALID_PARAMETER_VALUE "Registered model alias X not found."
        unset_alias = exc.error_code == "INVALID_PARAMETER_VALUE" and "alias" in exc.message and \
            "not found" in exc.message
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or unset_alias:
            return None
        raise RegistryError(f"could not read {name}@{alias} ({exc.error_code}: {exc.message}); nothing was "
                            "changed, try again") from None


def _set_alias(client, name: str, alias: str, version: str, reason: str, expected=_UNSET,
               evidence: dict | None = None) -> None:
    """Compare-and-set: move ``alias`` to ``version`` only if it still points where the decision saw it
    (``expected``); the move is verified and recorded in the audit trail (with ``evidence`` as JSON, where the
    decision had more than its reason, such as shadow scoring)."""
    previous = _alias_version(client, name, alias)
    if expected is not _UNSET and previous != expected:
        raise RegistryError(f"{name}@{alias} moved from {expected} to {previous} while this decision was being made "
                            f"(about version {expected}); nothing was changed, decide again")
    move = {"alias": alias, "from": previous, "to": str(version), "reason": reason, "move_id": uuid.uuid4().hex,
            "actor": _actor(), **({"evidence": json.dumps(evidence)} if evidence else {})}
    _audit(client, name, {**move, "phase": "intent"})
    client.set_registered_model_alias(name, alias, version)
    now = _alias_version(client, name, alias)
    if now != str(version):
        _audit(client, name, {**move, "phase": "failed", "reason": f"{reason}; found {now} after the move"})
        raise RegistryError(f"{name}@{alias} points at {now} right after being set to {version}: another writer "
                            "moved it; check the audit trail")
    _audit(client, name, {**move, "phase": "done"})


def _unset_alias(client, name: str, alias: str, version: str, reason: str) -> None:
    """Remove ``alias`` (pointing at ``version``), with intent and outcome in the audit trail."""
    move = {"alias": alias, "from": version, "to": None, "reason": reason, "move_id": uuid.uuid4().hex,
            "actor": _actor()}
    _audit(client, name, {**move, "phase": "intent"})
    client.delete_registered_model_alias(name, alias)
    _audit(client, name, {**move, "phase": "done"})


@contextlib.contextmanager
def promotion_lease(client, name: str, ttl_s: float = LEASE_TTL_S) -> Iterator[str]:
    """Hold ``<name>.promotion-lease`` for the duration of a promotion or rollback, or refuse at once.

    The lease is a registered model: MLflow's store creates a name once (a unique key), so two promoters that start
    together cannot both hold it. A lease past its expiry (its holder died) is broken once and taken; the lease is
    always released, also when the promotion fails."""
    from mlflow.exceptions import MlflowException

    lease, holder = name + LEASE_SUFFIX, f"{_actor()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    for attempt in (1, 2):
        try:
            client.create_registered_model(lease, tags={"holder": holder, "expires_at": str(time.time() + ttl_s)},
                                           description=f"held while a promotion of {name} decides and moves aliases")
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"could not take the promotion lease {lease} ({exc.error_code}: {exc.message}); "
                                    "nothing was changed, try again") from None
            try:
                held = client.get_registered_model(lease)
            except MlflowException:  # released in the meantime
                held = None
            tags = held.tags if held is not None else {}
            if attempt == 2 or held is None or time.time() < float(tags.get("expires_at", "inf")):
                raise RegistryError(f"another promotion of {name} is in progress (lease {lease} held by "
                                    f"{tags.get('holder', 'unknown')}); nothing was changed, try again when it has "
                                    "finished") from None
            log.warning("breaking the expired promotion lease of %s held by %s", name, tags.get("holder"))
            client.delete_registered_model(lease)
    try:
        yield holder
    finally:
        client.delete_registered_model(lease)


def verify_evidence(name: str, model_version, public_key: str | Path | None = None) -> bool:
    """Check a fetched model version's signed gate evidence with the public key (argument, or
    $CXRLT_EVIDENCE_VERIFY_KEY).
    Raises :class:`~cxrlt.evidence.EvidenceError` when it does not hold; returns False, with a warning, when no key is
    configured (local development), True when verified."""
    key = public_key or evidence.verify_key()
    if key is None:
        log.warning("%s version %s: gate evidence not verified (no %s); set it wherever a forged tag must not pass",
                    name, model_version.version, evidence.VERIFY_KEY_ENV)
        return False
    evidence.verify(name, str(model_version.version), model_version.tags, key)
    return True


def register_bundle(bundle_dir: str | Path, metrics: dict, gate_evidence: dict, lineage: dict,
                    evaluation_csv: str | Path | None = None, name: str = REGISTERED_MODEL,
                    tracking_uri: str | None = None, experiment: str = REGISTRY_EXPERIMENT,
                    signing_key: str | Path | None = None) -> str:
    """Log the bundle as a pyfunc model, register a version with lineage tags, sign its evidence (with
    ``signing_key`` or $CXRLT_EVIDENCE_SIGNING_KEY) and point ``challenger`` at it."""
    import mlflow

    if not gate_evidence.get("passed"):
        raise RegistryError("the evaluation gate did not pass: nothing is registered")
    from cxrlt.tracking import experiment_id

    client = _client(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id(experiment, client), run_name="register-bundle") as run:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, int | float)})
        mlflow.log_dict(gate_evidence, "gate_evidence.json")
        manifest = bundle_manifest(bundle_dir)  # what the gate evaluated: serve build verifies every file against it
        mlflow.log_dict(manifest, MANIFEST_ARTIFACT)
        if evaluation_csv is not None:
            mlflow.log_artifact(str(evaluation_csv), artifact_path=EVAL_ARTIFACT)
            for plot in sorted(Path(evaluation_csv).parent.glob("*.png")):  # reliability before/after, per-class AP
                mlflow.log_artifact(str(plot), artifact_path=EVAL_ARTIFACT)
            # each image's subgroups (promotion compares versions within them), the subgroup metrics and the report
            # and the reference that drift monitoring compares served traffic with
            for extra in (GROUPS_CSV, SUBGROUPS_JSON, REPORT_HTML, "metrics.json", DRIFT_REFERENCE_JSON):
                if (Path(evaluation_csv).parent / extra).is_file():
                    mlflow.log_artifact(str(Path(evaluation_csv).parent / extra), artifact_path=EVAL_ARTIFACT)
        with _pyfunc_model(bundle_dir) as arguments:
            info = mlflow.pyfunc.log_model(name="bundle", **arguments)
    version = mlflow.register_model(info.model_uri, name).version
    tags = {"lineage." + k: str(v) for k, v in lineage.items()}
    tags.update({"metrics": json.dumps(metrics), "gate_evidence": json.dumps(gate_evidence), "run_id": run.info.run_id,
                 "bundle_manifest": f"runs:/{run.info.run_id}/{MANIFEST_ARTIFACT}",
                 "bundle_manifest_sha256": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest(),
                 "evaluation_artifact": f"runs:/{run.info.run_id}/{EVAL_ARTIFACT}" if evaluation_csv else "",
                 "model_card": _attach_card(client, name, str(version), run.info.run_id, metrics, gate_evidence,
                                            lineage, evaluation_csv)})
    key = signing_key or evidence.signing_key()
    if key is not None:
        tags.update(evidence.sign(name, str(version), tags, key))
    else:
        log.warning("%s version %s is registered unsigned (no %s): verifiers with a public key will refuse it",
                    name, version, evidence.SIGNING_KEY_ENV)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    _set_alias(client, name, CHALLENGER_ALIAS, version, "registered after a passing gate")
    return str(version)


def _attach_card(client, name: str, version: str, run_id: str, metrics: dict, gate_evidence: dict, lineage: dict,
                 evaluation_csv: str | Path | None) -> str:
    """Write the version's model card (JSON, Markdown, HTML with the evaluation's plots) into its run and make the
    Markdown the version's description; returns the card's artifact URI."""
    from cxrlt.model_card import build_card, write_card

    folder = Path(evaluation_csv).parent if evaluation_csv is not None else None
    subgroups = json.loads((folder / SUBGROUPS_JSON).read_text()) if folder and (folder / SUBGROUPS_JSON).is_file() \
        else None
    plots = {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))} if folder else {}
    card = build_card(name, version, metrics, gate_evidence, lineage, subgroups, list(plots))
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_card(card, Path(tmp), plots)
        for path in paths.values():
            client.log_artifact(run_id, str(path), MODEL_CARD_ARTIFACT)
        client.update_model_version(name, version, description=paths["md"].read_text())
    return f"runs:/{run_id}/{MODEL_CARD_ARTIFACT}"


def _version_number(client, name: str, version: str) -> str:
    """``@alias`` (resolved once) or a version number -> the number; an unset alias is an error naming it."""
    number = _alias_version(client, name, version[1:]) if version.startswith("@") else version
    if number is None:
        raise RegistryError(f"{name} has no version {version}")
    return number


def model_card(version: str = f"@{CHAMPION_ALIAS}", name: str = REGISTERED_MODEL, tracking_uri: str | None = None,
               html_out: str | Path | None = None) -> str:
    """A registered version's model card as Markdown (``@alias`` or a version number); with ``html_out``, its HTML
    page is also copied there."""
    import shutil

    import mlflow

    client = _client(tracking_uri)
    number = _version_number(client, name, version)
    mv = client.get_model_version(name, number)
    uri = mv.tags.get("model_card")
    if not uri:
        raise RegistryError(f"{name} version {number} has no model card (registered before cards existed): "
                            "its description and tags hold what is known")
    folder = Path(mlflow.artifacts.download_artifacts(uri))
    if html_out is not None:
        Path(html_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "card.html", html_out)
    return (folder / "card.md").read_text()


def evaluation_file(version: str, filename: str, name: str = REGISTERED_MODEL,
                    tracking_uri: str | None = None) -> tuple[Path, str]:
    """One file of a registered version's evaluation artifact (``@alias`` or a number), downloaded, and the
    version's number."""
    client = _client(tracking_uri)
    number = _version_number(client, name, version)
    path = _evaluation_folder(client.get_model_version(name, number)) / filename
    if not path.is_file():
        raise RegistryError(f"{name} version {number}'s evaluation has no {filename} (registered by an older "
                            "pipeline): register a newly trained version, or pass the file yourself")
    return path, str(number)


def _evaluation_folder(model_version) -> Path:
    """The evaluation artifact of a model version its caller already fetched (downloaded once)."""
    import mlflow

    uri = model_version.tags.get("evaluation_artifact")
    if not uri:
        raise RegistryError(f"version {model_version.version} has no evaluation predictions to compare")
    return Path(mlflow.artifacts.download_artifacts(uri))


def _predictions(folder: Path, version: str) -> pd.DataFrame:
    """The evaluation's predictions: the one CSV of the folder that is not the per-image groups."""
    found = [p for p in sorted(folder.glob("*.csv")) if p.name != GROUPS_CSV]
    if len(found) != 1:
        raise RegistryError(f"version {version}'s evaluation holds {[p.name for p in found]}, not one predictions CSV")
    return pd.read_csv(found[0], dtype={"ImageID": str})


def compare_subgroups(challenger: pd.DataFrame, champion: pd.DataFrame | None, labels: pd.DataFrame,
                      groups: pd.DataFrame, classes: list[str], gate: SubgroupGate) -> tuple[list[dict], list[str]]:
    """The subgroup rule on the images all three cover (by ImageID, columns by class name): per group the paired
    (challenger - champion) CI and the challenger's mECE; without a champion only the mECE cap applies. Returns the
    rows and the refusals (empty when the rule holds)."""
    from cxrlt.subgroups import ATTRIBUTES, paired_subgroup_deltas, subgroup_refusals

    missing = [a for a in ATTRIBUTES if a not in groups.columns]
    if missing:
        raise RegistryError(f"the challenger's {GROUPS_CSV} lacks the columns {missing}")
    ids = sorted(set(challenger["ImageID"]) & set(labels["ImageID"]) & set(groups["ImageID"].astype(str)))
    if len(ids) < len(labels):
        raise RegistryError(f"the challenger's {GROUPS_CSV} does not cover the evaluation set")
    y = labels.set_index("ImageID").loc[ids, classes].to_numpy()
    a = challenger.set_index("ImageID").loc[ids, classes].to_numpy()
    b = champion.set_index("ImageID").loc[ids, classes].to_numpy() if champion is not None else None
    by_image = groups.astype({"ImageID": str}).drop_duplicates("ImageID").set_index("ImageID").loc[ids]
    rows = paired_subgroup_deltas(y, a, b, {k: by_image[k].astype(str).tolist() for k in ATTRIBUTES}, gate)
    return rows, subgroup_refusals(rows, gate)


def paired_bootstrap(challenger: pd.DataFrame, champion: pd.DataFrame, labels: pd.DataFrame, classes: list[str],
                     n: int = 200, seed: int = 0) -> dict:
    """mAP difference (challenger - champion) on the same images with a 95 % percentile bootstrap CI."""
    from cxrlt.metrics import paired_bootstrap_diff

    ids = sorted(set(challenger["ImageID"]) & set(champion["ImageID"]) & set(labels["ImageID"]))
    if len(ids) < len(labels) or len(ids) < len(challenger):
        raise RegistryError("challenger and champion were not evaluated on the same evaluation set")
    y = labels.set_index("ImageID").loc[ids, classes].to_numpy()
    a = challenger.set_index("ImageID").loc[ids, classes].to_numpy()
    b = champion.set_index("ImageID").loc[ids, classes].to_numpy()
    return {**paired_bootstrap_diff(y, a, b, n=n, seed=seed), "n_images": len(ids)}


def promote(labels_csv: str | Path, name: str = REGISTERED_MODEL, tracking_uri: str | None = None,
            margin: float = PROMOTION_MARGIN, n_bootstrap: int = 200, public_key: str | Path | None = None,
            subgroup_gate: SubgroupGate | None = None, report: str | Path | None = None,
            version: str | None = None, shadow_agreement: dict | None = None,
            shadow_requirement: ShadowRequirement | None = None) -> dict:
    """Move ``champion`` to the challenger (or to ``version``, a registered version chosen by number) if its signed
    evidence says it passed its gate and it is non-inferior on the same evaluation set: the lower end of the 95 % CI
    of (challenger - champion) mAP must be >= -margin, and, where the challenger's evaluation carries each image's
    subgroups, no subgroup may fail ``subgroup_gate`` (the profile's ``gate.subgroup_*``;
    :class:`cxrlt.subgroups.SubgroupGate`'s defaults otherwise). The whole decision runs under the promotion lease,
    so concurrent promoters cannot both move the champion. With ``report``, the challenger's evaluation report with
    each finding's challenger-minus-champion AP and its paired CI is written there (HTML), whatever the decision.

    Shadow scoring: ``shadow_agreement`` maps served (champion, challenger) names (``<name>/<version>``) to their
    agreement on live traffic (:func:`cxrlt.shadow.pair_report`). Where it is given, or ``shadow_requirement`` asks
    for a minimum sample, the pair being decided must meet ``shadow_requirement``; the agreement goes into the
    decision and, when the champion moves, into the audit trail."""
    from cxrlt.shadow import ShadowRequirement
    from cxrlt.subgroups import SubgroupGate

    client = _client(tracking_uri)
    with promotion_lease(client, name):
        return _promote(client, labels_csv, name, margin, n_bootstrap, public_key, subgroup_gate or SubgroupGate(),
                        report, version, shadow_agreement, shadow_requirement or ShadowRequirement())


def _write_promotion_report(path: Path, folder: Path | None, ours: pd.DataFrame | None,
                            theirs: pd.DataFrame | None, labels: pd.DataFrame, groups: pd.DataFrame | None,
                            decision: dict, n_bootstrap: int) -> None:
    """The challenger's evaluation report with per-finding deltas against the champion (what promotion decided
    on), the decision at its top; bands and views come from the challenger's evaluation (``groups``: its
    groups.csv, already read by promotion)."""
    from cxrlt.evaluation_report import build_report
    from cxrlt.labels import KNOWN_CLASSES

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    verdict = f"{'PROMOTED' if decision['promoted'] else 'REFUSED'}: {decision['reason']}"
    if ours is None:
        import html

        path.write_text(f"<!doctype html><html><body><h1>Promotion of version {decision['challenger']}</h1>"
                        f"<p>{html.escape(verdict)}</p><p>The challenger's registration carries no evaluation to "
                        "report.</p></body></html>\n")
        return
    metrics = folder / "metrics.json"
    per_class = json.loads(metrics.read_text()).get("per_class", {}) if metrics.is_file() else {}
    bands = {c: v["band"] for c, v in per_class.items() if v.get("band")}
    ids = labels["ImageID"].astype(str)
    views = groups.drop_duplicates("ImageID").set_index("ImageID")["projection"].reindex(ids).fillna("unknown") \
        .tolist() if groups is not None else ["all"] * len(ids)
    subgroups = json.loads((folder / SUBGROUPS_JSON).read_text()) if (folder / SUBGROUPS_JSON).is_file() else None
    title = (f"Promotion of version {decision['challenger']} against champion {decision['champion']}: {verdict}"
             if theirs is not None else f"Promotion of version {decision['challenger']} (no champion): {verdict}")
    page, data = build_report(labels, ours, list(KNOWN_CLASSES), bands, views, title, subgroups, champion=theirs,
                              n_bootstrap=n_bootstrap)
    path.write_text(page)
    if data["deltas"] is not None:
        decision["per_class"] = data["deltas"]


def _shadow_check(name: str, champion: str, challenger: str, agreement: dict | None,
                  requirement: ShadowRequirement) -> dict | None:
    """The shadow part of a promotion: None when neither evidence nor a minimum sample is asked for; else the
    pair's numbers (without the per-finding rows) and the requirement's refusals."""
    from cxrlt.shadow import judge

    if agreement is None and not requirement.min_items:
        return None
    pair = (f"{name}/{champion}", f"{name}/{challenger}")
    found = (agreement or {}).get(pair)
    summary = {k: v for k, v in (found or {}).items() if k != "findings"}
    refusals = judge(found, requirement)
    if agreement is None:
        refusals = [f"the profile requires {requirement.min_items} shadow-scored items and no shadow evidence was "
                    "given (--shadow-prometheus)"]
    return {"champion": pair[0], "challenger": pair[1], **summary, "requirement": requirement.__dict__,
            "refusals": refusals}


def _promote(client, labels_csv, name: str, margin: float, n_bootstrap: int, public_key,
             subgroup_gate: SubgroupGate, report: str | Path | None = None, version: str | None = None,
             shadow_agreement: dict | None = None, shadow_requirement: ShadowRequirement | None = None) -> dict:
    from cxrlt.data.tables import read_label_csv
    from cxrlt.labels import KNOWN_CLASSES

    challenger_version = str(version) if version else _alias_version(client, name, CHALLENGER_ALIAS)
    if challenger_version is None:
        raise RegistryError(f"{name} has no {CHALLENGER_ALIAS} version to promote")
    if version and not str(version).isdigit():
        raise RegistryError(f"version must be a registered version's number, got {version!r}")
    try:
        challenger = client.get_model_version(name, challenger_version)
    except Exception as exc:  # noqa: BLE001 - MLflow's "not found" and transport errors alike: name the version
        raise RegistryError(f"{name} version {challenger_version} cannot be read: {exc}") from exc
    verified = verify_evidence(name, challenger, public_key)
    if not json.loads(challenger.tags.get("gate_evidence", "{}")).get("passed"):
        raise RegistryError(f"version {challenger.version} did not pass its gate")
    champion_version = _alias_version(client, name, CHAMPION_ALIAS)  # None only when MLflow says "not found"
    champion = client.get_model_version(name, champion_version) if champion_version else None
    decision = {"challenger": challenger.version, "champion": champion.version if champion else None,
                "evidence_verified": verified}
    if champion is not None and champion.version == challenger.version:
        decision.update(promoted=False, reason="challenger is already champion")
        return decision
    # each version's evaluation is downloaded and read once, for the overall and the subgroup comparisons
    folder = _evaluation_folder(challenger) if champion is not None or challenger.tags.get("evaluation_artifact") \
        else None
    ours = _predictions(folder, challenger.version) if folder is not None else None
    theirs = _predictions(_evaluation_folder(champion), champion.version) if champion is not None else None
    groups = pd.read_csv(folder / GROUPS_CSV, dtype=str) if folder is not None and (folder / GROUPS_CSV).is_file() \
        else None
    needs_labels = champion is not None or groups is not None or (report is not None and ours is not None)
    labels = read_label_csv(labels_csv)[0] if needs_labels else None
    if champion is None:
        decision.update(promoted=True, reason="no champion yet")
    else:
        stats = paired_bootstrap(ours, theirs, labels, list(KNOWN_CLASSES), n_bootstrap)
        decision.update(stats)
        decision["promoted"] = stats["ci95"][0] >= -margin
        decision["reason"] = (f"CI low {stats['ci95'][0]:.4f} {'>=' if decision['promoted'] else '<'} -{margin}")
    if groups is not None:
        rows, refusals = compare_subgroups(ours, theirs, labels, groups, list(KNOWN_CLASSES), subgroup_gate)
        decision["subgroups"] = rows
        if refusals:
            decision["promoted"] = False
            decision["reason"] += "; refused in subgroups: " + " | ".join(refusals)
    else:
        decision["subgroups"] = f"not checked: the challenger's evaluation carries no {GROUPS_CSV}"
    shadow = _shadow_check(name, champion.version, challenger.version, shadow_agreement, shadow_requirement) \
        if champion is not None and shadow_requirement is not None else None
    if shadow is not None:
        decision["shadow"] = shadow
        if shadow["refusals"]:
            decision["promoted"] = False
            decision["reason"] += "; refused by shadow scoring: " + " | ".join(shadow["refusals"])
    if report is not None:
        _write_promotion_report(Path(report), folder, ours, theirs, labels, groups, decision, n_bootstrap)
    if decision["promoted"]:
        _set_alias(client, name, CHAMPION_ALIAS, challenger.version, decision["reason"], expected=champion_version,
                   evidence={"shadow": shadow} if shadow is not None else None)
        if _alias_version(client, name, CHALLENGER_ALIAS) == str(challenger.version):  # a newer one keeps it
            _unset_alias(client, name, CHALLENGER_ALIAS, challenger.version, "promoted")
    return decision


def status(name: str = REGISTERED_MODEL, tracking_uri: str | None = None) -> dict:
    """Where the aliases point, and for each of those versions its gate result, metrics and lineage tags."""
    client = _client(tracking_uri)
    out: dict = {"registered_model": name}
    for alias in (CHAMPION_ALIAS, CHALLENGER_ALIAS):
        version = _alias_version(client, name, alias)
        if version is None:
            out[alias] = None
            continue
        mv = client.get_model_version(name, version)
        evidence = json.loads(mv.tags.get("gate_evidence") or "{}")
        lineage = {k.removeprefix("lineage."): v for k, v in mv.tags.items() if k.startswith("lineage.")}
        out[alias] = {"version": version, "created": mv.creation_timestamp, "run_id": mv.tags.get("run_id"),
                      "gate_passed": bool(evidence.get("passed")),
                      "metrics": json.loads(mv.tags.get("metrics") or "{}"), "lineage": lineage}
    return out


def rollback(name: str = REGISTERED_MODEL, tracking_uri: str | None = None) -> dict:
    """Point ``champion`` back at the version it held before its last move (from the complete audit trail)."""
    client = _client(tracking_uri)
    with promotion_lease(client, name):
        moves = [e for e in audit_trail(name, client=client)
                 if e["alias"] == CHAMPION_ALIAS and e["from"] and e.get("reason") != "rollback"
                 and e.get("phase") in (None, "done")]  # completed moves only (records before phases had none)
        if not moves:
            raise RegistryError(f"{name} has no previous champion to roll back to")
        target = moves[-1]["from"]
        current = _alias_version(client, name, CHAMPION_ALIAS)
        _set_alias(client, name, CHAMPION_ALIAS, target, "rollback", expected=current)
    return {"champion": target, "previous": current}


def download_verified_bundle(name: str, version: str, dst: str | Path, tracking_uri: str | None = None,
                             public_key: str | Path | None = None) -> Path:
    """Download version ``version`` of ``name`` and verify its signed evidence (when a public key is configured),
    then every file against the manifest whose digest the evidence covers."""
    import mlflow

    client = _client(tracking_uri)
    mv = client.get_model_version(name, version)
    verify_evidence(name, mv, public_key)
    manifest_uri = mv.tags.get("bundle_manifest")
    if not manifest_uri:
        raise RegistryError(f"{name} version {version} has no bundle manifest (registered before manifests existed "
                            "or not through cxrlt): re-register it through the pipeline")
    manifest = json.loads(Path(mlflow.artifacts.download_artifacts(manifest_uri, dst_path=str(Path(dst) / "manifest")))
                          .read_text())
    expected = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    if mv.tags.get("bundle_manifest_sha256") != expected:
        raise RegistryError(f"{name} version {version}: the stored manifest does not match its recorded digest")
    bundle = download_bundle(f"models:/{name}/{version}", Path(dst) / "model", tracking_uri)
    verify_bundle(bundle, manifest, f"models:/{name}/{version}")
    return bundle


def download_bundle(model_uri: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Fetch ``models:/name@alias`` and return the served-bundle directory inside it."""
    import mlflow

    _client(tracking_uri)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    found = list(local.rglob("bundle.json"))
    if not found:
        raise RegistryError(f"{model_uri} holds no served bundle")
    return found[0].parent


def resolve_version(model_uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """``models:/name@alias`` or ``models:/name/version`` -> (name, version), resolving an alias exactly once so
    that the files served and the version reported cannot come from two different versions."""
    rest = model_uri.removeprefix("models:/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        return name, str(_client(tracking_uri).get_model_version_by_alias(name, alias).version)
    name, _, version = rest.partition("/")
    if version == "none":
        raise RegistryError(f"{model_uri}: no version has been rolled out yet; run `cxrlt serve rollout --version "
                            "@champion` (or a promotion with rollout)")
    if not version.isdigit():
        raise RegistryError(f"{model_uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    return name, version
