"""The registry trusts the registration step's signature, not whoever can write tags; promotion is one at a time.

Against a real MLflow server: a signed version is served; an unsigned one, one whose "passed" evidence was edited, and
one signed with another key are refused by `cxrlt serve build`; four promoters started together move the champion
exactly once; every move is recorded as intent, then outcome.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrlt import evidence
from cxrlt.platform import CHAMPION_ALIAS, REGISTERED_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return evidence.generate_keys(tmp_path_factory.mktemp("keys"))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    import mlflow

    from cxrlt.ops import mlflow_server

    before = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("trust-mlflow")
    state = mlflow_server.start(root / "data", port=0, state_dir=root / "state")
    try:
        yield state["tracking_uri"]
    finally:
        mlflow.set_tracking_uri(before)
        assert mlflow_server.stop(state_dir=root / "state")


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory) -> Path:
    from cxrlt.export import export_bundle

    out = tmp_path_factory.mktemp("trust-bundle") / "bundle"
    export_bundle(tiny_bundle / "ensemble", tiny_bundle / "zeroshot", out)
    return out


def test_keys_statement_and_signature(keys, tmp_path):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(Exception, match="exists"):
        evidence.generate_keys(private.parent)
    tags = {"gate_evidence": '{"passed": true}', "metrics": '{"mAP": 0.5}', "bundle_manifest_sha256": "ab" * 32,
            "run_id": "r1", "lineage.git_commit": "x"}
    # the signed bytes, by hand: sorted keys, no spaces, the tags exactly as stored
    assert evidence.statement("m", "3", tags) == (
        b'{"bundle_manifest_sha256":"' + b"ab" * 32 + b'","gate_evidence":"{\\"passed\\": true}",'
        b'"metrics":"{\\"mAP\\": 0.5}","registered_model":"m","run_id":"r1","version":"3"}')
    signed = {**tags, **evidence.sign("m", "3", tags, private)}
    evidence.verify("m", "3", signed, public)
    evidence.verify("m", "3", signed, public.read_text())  # PEM text works like the file (ConfigMap as env)
    evidence.verify("m", "3", {**signed, "lineage.git_commit": "y"}, public)  # lineage is not part of the claim
    for changed in ({"gate_evidence": '{"passed": false}'}, {"run_id": "r2"}):
        with pytest.raises(evidence.EvidenceError, match="differ from what the registration step signed"):
            evidence.verify("m", "3", {**signed, **changed}, public)
    with pytest.raises(evidence.EvidenceError, match="differ"):
        evidence.verify("m", "4", signed, public)  # a signature does not move to another version


def _serve_build(version: str, out: Path, verify_key: Path | None, uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env.pop(evidence.VERIFY_KEY_ENV, None)
    if verify_key is not None:
        env[evidence.VERIFY_KEY_ENV] = str(verify_key)
    return subprocess.run([sys.executable, "-m", "cxrlt.cli", "serve", "build", "--bundle",
                           f"models:/{REGISTERED_MODEL}/{version}", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_serve_build_refuses_what_the_registration_step_did_not_sign(keys, mlflow_uri, served, tmp_path):
    import mlflow

    from cxrlt.registry import register_bundle

    private, public = keys
    passed = {"passed": True, "checks": []}
    signed = register_bundle(served, {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=mlflow_uri,
                             signing_key=private)
    # a training pod with edit rights registers its own version tagged as passed: it has no signing key
    forged = register_bundle(served, {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=mlflow_uri)
    # ... or edits the tags of a signed version after the fact
    edited = register_bundle(served, {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=mlflow_uri,
                             signing_key=private)
    mlflow.MlflowClient(mlflow_uri).set_model_version_tag(REGISTERED_MODEL, edited, "metrics",
                                                          json.dumps({"mAP": 0.9}))
    # ... or signs with a key of its own
    own_private, _ = evidence.generate_keys(tmp_path / "attacker")
    other = register_bundle(served, {"mAP": 0.5}, passed, {"git_commit": "t"}, tracking_uri=mlflow_uri,
                            signing_key=own_private)

    ok = _serve_build(signed, tmp_path / "repo-signed", public, mlflow_uri)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "repo-signed" / "cxr" / "config.pbtxt").exists()
    for version, reason in ((forged, "carries no evidence signature"), (other, "was signed with key"),
                            (edited, "differ from what the registration step signed")):
        refused = _serve_build(version, tmp_path / f"repo-{version}", public, mlflow_uri)
        assert refused.returncode == 1 and reason in refused.stderr, (version, refused.stderr[-2000:])
        assert "Traceback" not in refused.stderr and not (tmp_path / f"repo-{version}" / "cxr").exists()
    # without a verifying key (local development) the build goes on and says that nothing was verified
    unchecked = _serve_build(forged, tmp_path / "repo-unchecked", None, mlflow_uri)
    assert unchecked.returncode == 0 and "gate evidence not verified" in unchecked.stderr


_PROMOTE = """
import json, sys, time
from cxrlt.registry import RegistryError, promote
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
try:
    print(json.dumps(promote(sys.argv[2], tracking_uri=sys.argv[3], public_key=sys.argv[4])))
except RegistryError as exc:
    print(json.dumps({"refused": str(exc)}))
"""


def test_concurrent_promotions_move_the_champion_exactly_once(keys, mlflow_uri, served, tmp_path):
    import mlflow

    from cxrlt.registry import LEASE_SUFFIX, audit_trail, register_bundle

    private, public = keys
    client = mlflow.MlflowClient(mlflow_uri)
    with pytest.raises(Exception):  # noqa: B017 (no champion yet in this module's registry)
        client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS)
    challenger = register_bundle(served, {"mAP": 0.5}, {"passed": True, "checks": []}, {"git_commit": "t"},
                                 tracking_uri=mlflow_uri, signing_key=private)
    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID\n")
    start = time.time() + 20  # every process has imported MLflow by then
    procs = [subprocess.Popen([sys.executable, "-c", _PROMOTE, str(start), str(labels), mlflow_uri, str(public)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    winners = [r for r in results if r.get("promoted")]
    assert len(winners) == 1 and winners[0]["challenger"] == challenger and winners[0]["evidence_verified"], results
    for other in results:
        if other is not winners[0]:  # refused at the lease, or came after and found nothing to do (the winner
            # has made the challenger champion, or has already removed the challenger alias)
            assert any(why in other.get("refused", "") for why in ("another promotion", "no challenger version")) or (
                other.get("promoted") is False and other.get("reason") == "challenger is already champion"), other
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION_ALIAS).version == challenger
    champion_moves = [m for m in audit_trail(REGISTERED_MODEL, mlflow_uri) if m["alias"] == CHAMPION_ALIAS]
    assert [m["phase"] for m in champion_moves] == ["intent", "done"]  # recorded before and after, once
    assert champion_moves[0]["move_id"] == champion_moves[1]["move_id"] and champion_moves[1]["to"] == challenger
    with pytest.raises(Exception):  # noqa: B017 (the lease is released)
        client.get_registered_model(REGISTERED_MODEL + LEASE_SUFFIX)


def test_registry_keygen_cli(tmp_path):
    from typer.testing import CliRunner

    from cxrlt.cli import app

    result = CliRunner().invoke(app, ["registry", "keygen", "--out", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert Path(made["signing_key"]).name == evidence.SIGNING_KEY_FILE and len(made["key_id"]) == 16
    again = CliRunner().invoke(app, ["registry", "keygen", "--out", str(tmp_path / "k")])
    assert again.exit_code == 1 and "exists" in again.output


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A real MLflow server running MLflow's basic-auth app (default permission READ), and its admin password."""
    import secrets

    import mlflow

    from cxrlt.ops import mlflow_server

    before = os.environ.get("MLFLOW_TRACKING_URI")
    root = tmp_path_factory.mktemp("auth-mlflow")
    admin = secrets.token_urlsafe(16)
    (root / "basic_auth.ini").write_text(
        f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n"
        f"admin_username = admin\nadmin_password = {admin}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    state = mlflow_server.start(root / "data", port=0, state_dir=root / "state", auth_config=root / "basic_auth.ini")
    try:
        yield state["tracking_uri"], admin
    finally:
        mlflow.set_tracking_uri(before)
        assert mlflow_server.stop(state_dir=root / "state")


def test_each_role_can_do_its_step_and_nothing_more(auth_server, keys, served, tmp_path, monkeypatch):
    """`cxrlt registry roles` as the admin, then each account against the real permission checks: training logs runs
    but cannot register, tag or move aliases; registration registers (signed) and sets the challenger; promotion
    moves the champion; serving downloads the verified bundle but moves nothing."""
    import secrets

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from typer.testing import CliRunner

    from cxrlt.cli import app
    from cxrlt.platform import CHALLENGER_ALIAS, MLFLOW_ROLE_PASSWORD_ENV, MLFLOW_ROLE_USERS, MLFLOW_ROLES
    from cxrlt.registry import download_verified_bundle, promote, register_bundle

    uri, admin = auth_server
    private, public = keys
    passwords = {role: secrets.token_urlsafe(16) for role in MLFLOW_ROLES}

    def login(role: str | None) -> None:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", MLFLOW_ROLE_USERS[role] if role else "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", passwords[role] if role else admin)

    login(None)
    for role, env in MLFLOW_ROLE_PASSWORD_ENV.items():
        monkeypatch.setenv(env, passwords[role])
    for _ in range(2):  # idempotent: a rerun resets the same accounts and grants
        made = CliRunner().invoke(app, ["registry", "roles", "--tracking-uri", uri])
        assert made.exit_code == 0, made.output
    grants = json.loads(made.stdout)
    assert grants["registration"]["grants"][f"registered_model:{REGISTERED_MODEL}"] == "EDIT"
    assert grants["promotion"]["grants"][f"registered_model:{REGISTERED_MODEL}"] == "MANAGE"
    assert grants["training"]["grants"] == grants["serving"]["grants"] == {}

    login("registration")
    version = register_bundle(served, {"mAP": 0.5}, {"passed": True, "checks": []}, {"git_commit": "t"},
                              tracking_uri=uri, signing_key=private)

    def denied(role: str, action) -> None:
        login(role)
        with pytest.raises(MlflowException) as info:
            action(MlflowClient(uri))
        assert info.value.error_code == "PERMISSION_DENIED", (role, info.value)

    login("training")
    training = MlflowClient(uri)
    run = training.create_run(training.create_experiment("member-training"))
    training.log_metric(run.info.run_id, "val_map", 0.4)
    denied("training", lambda c: c.set_model_version_tag(REGISTERED_MODEL, version, "gate_evidence", "{}"))
    denied("training", lambda c: c.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version))
    denied("training", lambda c: c.create_model_version(REGISTERED_MODEL, f"runs:/{run.info.run_id}/m",
                                                        run.info.run_id))
    denied("serving", lambda c: c.set_registered_model_alias(REGISTERED_MODEL, CHAMPION_ALIAS, version))
    denied("serving", lambda c: c.delete_registered_model_alias(REGISTERED_MODEL, CHALLENGER_ALIAS))
    denied("registration", lambda c: c.delete_registered_model(REGISTERED_MODEL))

    labels = tmp_path / "labels.csv"
    labels.write_text("ImageID\n")
    login("promotion")
    decision = promote(labels, tracking_uri=uri, public_key=public)
    assert decision["promoted"] and decision["evidence_verified"]
    login("serving")
    bundle = download_verified_bundle(REGISTERED_MODEL, version, tmp_path / "download", uri, public_key=public)
    assert (bundle / "bundle.json").exists()


def test_promotion_refuses_a_challenger_better_overall_and_worse_in_one_subgroup(mlflow_uri, served, tmp_path):
    """Three versions registered with their evaluation predictions and each image's groups, as the pipeline's
    evaluate and register steps write them: a challenger much better for women and at chance for men is refused,
    naming the subgroup; a fair one (better for women, unchanged for men) is promoted."""
    import mlflow
    import numpy as np
    import pandas as pd

    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.platform import GROUPS_CSV
    from cxrlt.registry import promote, register_bundle
    from cxrlt.subgroups import SubgroupGate

    name = "cxrlt-subgroup-gate"
    classes = list(KNOWN_CLASSES)
    rng = np.random.default_rng(7)
    n = 400
    ids = [f"img{i:04d}.png" for i in range(n)]
    y = (rng.random((n, len(classes))) < 0.15).astype(int)
    sex = np.where(np.arange(n) % 2 == 0, "F", "M")
    women, men = sex == "F", sex == "M"
    pd.DataFrame({"ImageID": ids, **{c: y[:, j] for j, c in enumerate(classes)}}).to_csv(tmp_path / "labels.csv",
                                                                                         index=False)
    champion = 0.15 * y + 0.85 * rng.random(y.shape)
    regressed = champion.copy()
    regressed[women] = 0.8 * y[women] + 0.2 * rng.random((women.sum(), len(classes)))
    regressed[men] = rng.random((men.sum(), len(classes)))
    fair = champion.copy()
    fair[women] = np.clip(champion[women] + 0.05 * y[women], 0, 1)

    def register(scores: np.ndarray, tag: str) -> str:
        folder = tmp_path / tag
        folder.mkdir()
        pd.DataFrame({"ImageID": ids, **{c: scores[:, j] for j, c in enumerate(classes)}}).to_csv(
            folder / "predictions.csv", index=False)
        pd.DataFrame({"ImageID": ids, "sex": sex, "age_band": "60-79",
                      "projection": np.where(np.arange(n) % 4 < 2, "frontal", "lateral")}).to_csv(
            folder / GROUPS_CSV, index=False)
        (folder / "subgroups.json").write_text(json.dumps([{"attribute": "sex", "group": "M", "n_images": 200,
                                                            "mAP": 0.123, "mAUROC": 0.5, "mECE": 0.1,
                                                            "ci95": {"mAP": [0.1, 0.15]}, "flags": []}]))
        return register_bundle(served, {"mAP": 0.5}, {"passed": True, "checks": []}, {"git_commit": tag},
                               evaluation_csv=folder / "predictions.csv", name=name, tracking_uri=mlflow_uri)

    gate = SubgroupGate(margin=0.02, max_ece=1.0, min_images=100, min_positive_labels=50, n_bootstrap=100)
    first = register(champion, "champion")
    decision = promote(tmp_path / "labels.csv", name, mlflow_uri, n_bootstrap=100, subgroup_gate=gate)
    assert decision["promoted"] and decision["reason"] == "no champion yet"
    assert {(r["attribute"], r["group"]) for r in decision["subgroups"]} == {
        ("sex", "F"), ("sex", "M"), ("age_band", "60-79"), ("projection", "frontal"), ("projection", "lateral")}
    client = mlflow.MlflowClient(mlflow_uri)
    register(regressed, "regressed")
    decision = promote(tmp_path / "labels.csv", name, mlflow_uri, n_bootstrap=100, subgroup_gate=gate,
                       report=tmp_path / "promotion.html")
    assert decision["ci95"][0] >= -0.02, decision["reason"]  # non-inferior overall: only the subgroup rule refuses
    assert not decision["promoted"] and "refused in subgroups: sex=M (200 images): mAUROC" in decision["reason"]
    assert "sex=F" not in decision["reason"]
    # the promotion report: the decision on top, each finding's challenger - champion AP (by class name) with its CI
    from sklearn.metrics import average_precision_score as ap

    page = (tmp_path / "promotion.html").read_text()
    assert "REFUSED: " in page and "challenger - champion" in page and page.count("data:image/png;base64,") == 3
    deltas = {r["class"]: r for r in decision["per_class"]}
    assert list(deltas) == classes
    j = classes.index("cardiomegaly")
    assert deltas["cardiomegaly"]["diff"] == pytest.approx(ap(y[:, j], regressed[:, j]) - ap(y[:, j], champion[:, j]),
                                                           abs=1e-9)
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == first
    fair_version = register(fair, "fair")
    decision = promote(tmp_path / "labels.csv", name, mlflow_uri, n_bootstrap=100, subgroup_gate=gate)
    assert decision["promoted"], decision["reason"]
    men_row = next(r for r in decision["subgroups"] if r["group"] == "M")
    assert men_row["diff"] == 0.0 and men_row["gated"]
    assert client.get_model_version_by_alias(name, CHAMPION_ALIAS).version == fair_version
    # every version carries its card: the Markdown is its description, the HTML page travels with it
    from typer.testing import CliRunner

    from cxrlt.cli import app

    page = tmp_path / "card.html"
    shown = CliRunner().invoke(app, ["registry", "card", "@champion", "--name", name, "--tracking-uri", mlflow_uri,
                                     "--html", str(page)])
    assert shown.exit_code == 0, shown.output
    assert f"# {name} version {fair_version}" in shown.stdout and "- git_commit: `fair`" in shown.stdout
    assert "| sex=M (n=200) | mAP | 0.123 | 0.100 to 0.150 |" in shown.stdout
    assert "<h2>Intended use</h2>" in page.read_text()
    assert client.get_model_version(name, first).description.startswith(f"# {name} version {first}")
    missing = CliRunner().invoke(app, ["registry", "card", "99", "--name", name, "--tracking-uri", mlflow_uri])
    assert missing.exit_code != 0


def test_promotion_asks_for_shadow_evidence_and_records_it_in_the_audit_trail(mlflow_uri, served, tmp_path):
    """With a shadow requirement, the pair being decided (as served: <name>/<version>) must have been shadow-scored
    enough, flip rarely and correlate: no evidence, too few items, or one finding flipping too often are each
    refused, naming why; a challenger that meets it is promoted and the audit trail keeps its shadow numbers."""
    import numpy as np
    import pandas as pd

    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.registry import audit_trail, promote, register_bundle
    from cxrlt.shadow import ShadowRequirement, agreement_sums, pair_report

    name, classes = "cxrlt-shadow-gate", list(KNOWN_CLASSES)
    rng = np.random.default_rng(3)
    ids = [f"img{i:03d}.png" for i in range(200)]
    y = (rng.random((200, len(classes))) < 0.2).astype(int)
    pd.DataFrame({"ImageID": ids, **{c: y[:, j] for j, c in enumerate(classes)}}).to_csv(tmp_path / "labels.csv",
                                                                                         index=False)
    scores = 0.3 * y + 0.7 * rng.random(y.shape)

    def register(tag: str) -> str:
        (tmp_path / tag).mkdir()
        pd.DataFrame({"ImageID": ids, **{c: scores[:, j] for j, c in enumerate(classes)}}).to_csv(
            tmp_path / tag / "predictions.csv", index=False)
        return register_bundle(served, {"mAP": 0.5}, {"passed": True, "checks": []}, {"git_commit": tag},
                               evaluation_csv=tmp_path / tag / "predictions.csv", name=name, tracking_uri=mlflow_uri)

    def agreement(n: int, noise: float, flipped: str | None = None) -> dict:
        x = rng.random((n, len(classes)))
        challenger = np.clip(x + noise * rng.standard_normal(x.shape), 0, 1)
        if flipped:
            j = classes.index(flipped)
            challenger[: n // 3, j] = 1 - x[: n // 3, j]  # a third of its items on the other side of 0.5
        sums = agreement_sums(x, challenger, 0.5)
        return {(f"{name}/{first}", f"{name}/{second}"): pair_report(
            {("known", c): {s: float(v[j]) for s, v in sums.items()} for j, c in enumerate(classes)},
            {"queue_full": 0.0, "failed": 0.0})}

    first = register("champion")
    assert promote(tmp_path / "labels.csv", name, mlflow_uri, n_bootstrap=50)["promoted"]
    second = register("challenger")
    need = ShadowRequirement(min_items=500, max_flip_rate=0.1, min_correlation=0.8)

    def decide(evidence):
        return promote(tmp_path / "labels.csv", name, mlflow_uri, n_bootstrap=50, shadow_agreement=evidence,
                       shadow_requirement=need)

    refused = decide(None)
    assert not refused["promoted"] and "requires 500 shadow-scored items" in refused["reason"]
    refused = decide(agreement(200, 0.01))
    assert not refused["promoted"] and "200 shadow-scored items < the 500 required" in refused["reason"]
    refused = decide(agreement(900, 0.01, flipped="cardiomegaly"))
    assert not refused["promoted"] and "cardiomegaly: flip rate" in refused["reason"]
    assert "cardiomegaly: score correlation" in refused["reason"] and "Mass" not in refused["reason"]
    assert refused["shadow"]["items"] == 900 and refused["shadow"]["challenger"] == f"{name}/{second}"
    promoted = decide(agreement(900, 0.01))
    assert promoted["promoted"], promoted["reason"]
    assert promoted["shadow"]["refusals"] == [] and promoted["shadow"]["worst_flip_rate"] <= 0.1
    done = [m for m in audit_trail(name, mlflow_uri) if m["phase"] == "done" and m["to"] == second]
    assert json.loads(done[-1]["evidence"])["shadow"]["items"] == 900
