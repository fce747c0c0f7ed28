"""``cxrlt registry``: the champion and challenger, their history, promotion and rollback.

Every command prints one JSON document on stdout (MLflow's own notices, such as run links, go to stderr), so its
output can be piped into ``jq`` or read by another program."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import _fail, app
from cxrlt.platform import PROMOTION_MARGIN, REGISTERED_MODEL

registry_app = typer.Typer(help="Registry: status, history, promote the challenger, roll the champion back, signing "
                                "keys for the gate's evidence.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")

TrackingUri = Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")]
ModelName = Annotated[str, typer.Option(help="Registered model.")]


def _emit(compute) -> None:
    """Run ``compute`` with stdout sent to stderr, then print its result as JSON on the real stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        result = compute()
    typer.echo(json.dumps(result, indent=2))


@registry_app.command("status")
def registry_status(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """The versions the champion and challenger aliases point at, with each version's gate result and lineage."""
    from cxrlt.registry import status

    _emit(lambda: status(name, tracking_uri))


@registry_app.command("history")
def registry_history(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """Every alias move, oldest first (the audit trail: alias, from, to, reason, time, actor; each move twice, its
    intent before the alias changes and its outcome, done or failed, after)."""
    from cxrlt.registry import audit_trail

    _emit(lambda: audit_trail(name, tracking_uri))


@registry_app.command("promote")
def registry_promote(
    labels: Annotated[Path, typer.Option(help="Labels of the evaluation set both versions were scored on.")],
    tracking_uri: TrackingUri = None,
    name: ModelName = REGISTERED_MODEL,
    margin: Annotated[float, typer.Option(help="Non-inferiority margin on mAP.")] = PROMOTION_MARGIN,
    config: Annotated[Path | None, typer.Option(
        help="Profile whose gate.subgroup_* settings judge each subgroup (their defaults without it).")] = None,
    report: Annotated[Path | None, typer.Option(
        help="Write the challenger's evaluation report with each finding's challenger-minus-champion AP and its "
             "paired 95 % CI here (HTML), whatever the decision.")] = None,
    version: Annotated[str | None, typer.Option(
        help="Judge this registered version (its number) instead of the one @challenger names; the same checks "
             "apply.")] = None,
    shadow_prometheus: Annotated[str | None, typer.Option(
        help="Prometheus that scrapes the Triton servers shadow-scoring the challenger: its agreement with the "
             "champion over the profile's gate.shadow_window must meet gate.shadow_* (required when "
             "gate.shadow_min_items > 0).")] = None,
) -> None:
    """champion <- challenger if its signed evidence says it passed its gate, its mAP CI (paired bootstrap) is within
    the margin, and no subgroup (sex, age band, projection) with enough images is worse beyond the profile's subgroup
    margin or above its mECE cap; the refusal names the subgroup and its numbers. With --shadow-prometheus (or a
    profile whose gate.shadow_min_items > 0), the challenger's shadow scoring on served traffic must also meet the
    profile's flip-rate and correlation limits; that evidence goes into the audit trail. The evidence is verified with
    $CXRLT_EVIDENCE_VERIFY_KEY (PEM text or a file); one promotion at a time holds the registry's promotion lease,
    another one started meanwhile is refused."""
    from cxrlt.config import GateConfig, load_profile
    from cxrlt.registry import promote

    gate = load_profile(config).gate if config else GateConfig()

    def decide():
        shadow = None
        if shadow_prometheus:
            from cxrlt.ops.shadow import from_prometheus

            shadow = from_prometheus(shadow_prometheus, gate.shadow_window)
        return promote(labels, name, tracking_uri, margin, subgroup_gate=gate.subgroup_gate(), report=report,
                       version=version, shadow_agreement=shadow, shadow_requirement=gate.shadow_requirement())

    _emit(decide)


@registry_app.command("card")
def registry_card(
    version: Annotated[str, typer.Argument(help="Version number or @alias.")] = "@champion",
    tracking_uri: TrackingUri = None,
    name: ModelName = REGISTERED_MODEL,
    html: Annotated[Path | None, typer.Option(help="Also write the card's HTML page (plots embedded) here.")] = None,
) -> None:
    """Print a registered version's model card: intended use, training data and lineage, overall and subgroup
    metrics with CIs, the gate's evidence, limitations. Written by registration into the version's run
    (model_card/card.{json,md,html}) and shown as the version's description in MLflow."""
    from cxrlt.registry import RegistryError, model_card

    try:
        typer.echo(model_card(version, name, tracking_uri, html))
    except RegistryError as exc:
        _fail(str(exc))
    if html is not None:
        typer.echo(f"HTML: {html}", err=True)


@registry_app.command("rollback")
def registry_rollback(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """Point champion back at the previous champion (from the alias audit trail)."""
    from cxrlt.registry import rollback

    _emit(lambda: rollback(name, tracking_uri))


@registry_app.command("keygen")
def registry_keygen(
    out: Annotated[Path, typer.Option(help="Directory for evidence-signing.pem (owner-readable only) and "
                                           "evidence-verify.pem.")],
) -> None:
    """Make the Ed25519 pair that signs each registered version's gate evidence.

    The private key goes to the registration step only (the cxrlt-evidence-signing Secret, or
    $CXRLT_EVIDENCE_SIGNING_KEY); the public key to everyone who verifies (the cxrlt-evidence-verify ConfigMap, or
    $CXRLT_EVIDENCE_VERIFY_KEY): serve build and promotion then refuse a version the registration step did not sign."""
    from cxrlt.evidence import generate_keys, key_id, load_key

    private, public = generate_keys(out)
    typer.echo(json.dumps({"signing_key": str(private), "verify_key": str(public),
                           "key_id": key_id(load_key(public, private=False))}, indent=2))


@registry_app.command("roles")
def registry_roles(tracking_uri: TrackingUri = None, name: ModelName = REGISTERED_MODEL) -> None:
    """Create the MLflow account of each role (training, registration, promotion, serving) with only the permissions
    its step needs; run as the MLflow admin (MLFLOW_TRACKING_USERNAME/PASSWORD). Each role's password comes from
    $CXRLT_MLFLOW_PASSWORD_<ROLE> (the role's Secret). Rerunning resets passwords and permissions to this table."""
    import os

    from cxrlt.ops.registry_roles import bootstrap_roles
    from cxrlt.platform import MLFLOW_ROLE_PASSWORD_ENV

    if not tracking_uri:
        raise typer.BadParameter("set --tracking-uri or MLFLOW_TRACKING_URI")
    passwords = {role: os.environ.get(env, "") for role, env in MLFLOW_ROLE_PASSWORD_ENV.items()}
    _emit(lambda: bootstrap_roles(tracking_uri, passwords, name))
