"""Serving: ``cxrlt export``, ``cxrlt serve build|up|down`` and the gRPC client ``cxrlt infer``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import Device, OnnxRuntime, Precision, _fail, app
from cxrlt.platform import MAX_IMAGE_BYTES, REGISTERED_MODEL

_OUT_HELP = ("{what} directory to write: new, empty, or one that cxrlt wrote before (then replaced); any other "
             "folder is refused and left as it is.")


@app.command("export")
def export_cmd(
    ensemble: Annotated[Path, typer.Option(help="Ensemble directory (cxrlt ensemble build).")],
    out: Annotated[Path, typer.Option(help=_OUT_HELP.format(what="Served-bundle"))],
    zeroshot: Annotated[Path | None, typer.Option(help="Zero-shot model directory.")] = None,
    programs: Annotated[bool, typer.Option(help="Also each network as a torch.export program (programs/*.pt2), "
                                                "for serve build --onnx-runtime aoti.")] = False,
) -> None:
    """Export every served network to ONNX (dynamic batch axis) with the metadata serving needs."""
    from cxrlt.export import export_bundle

    bundle = export_bundle(ensemble, zeroshot, out, programs=programs)
    typer.echo(f"served bundle {out}: views {list(bundle['views'])}, zero-shot {'yes' if bundle['zeroshot'] else 'no'}")


serve_app = typer.Typer(help="Triton serving: build the model repository, start and stop the server.",
                        no_args_is_help=True)
app.add_typer(serve_app, name="serve")


@serve_app.command("build")
def serve_build(
    bundle: Annotated[str, typer.Option(help="Served-bundle directory, or models:/<name>@<alias> from MLflow.")],
    out: Annotated[Path, typer.Option(help=_OUT_HELP.format(what="Model repository"))],
    onnx_runtime: Annotated[OnnxRuntime, typer.Option(help="python (ONNX Runtime in the python backend; embedded "
                                                           "default), native (onnxruntime_onnx; NGC image) or aoti "
                                                           "(the bundle's torch.export programs compiled here with "
                                                           "AOTInductor; bf16 and CUDA graphs on a GPU).")]
    = OnnxRuntime.python,
    device: Annotated[Device, typer.Option(help="gpu: KIND_GPU instances (native or aoti runtime).")] = Device.cpu,
    tensorrt: Annotated[bool, typer.Option(help="GPU: TensorRT execution accelerator for the ONNX models.")] = False,
    precision: Annotated[Precision, typer.Option(help="TensorRT precision.")] = Precision.fp32,
    instances: Annotated[int | None, typer.Option(help="Instances per compute model [default: half the cores].")]
    = None,
    ort_threads: Annotated[int, typer.Option(help="ONNX Runtime intra-op threads per instance.")] = 1,
    max_batch: Annotated[int, typer.Option(help="Largest batch any model runs (images).")] = 16,
    max_queue: Annotated[int, typer.Option(help="Requests queued at the cxr entry before new ones are refused "
                                                "(UNAVAILABLE) instead of piling up.")] = 64,
    queue_timeout_ms: Annotated[int, typer.Option(help="A request waiting longer than this in a queue is "
                                                       "refused.")] = 30_000,
    bls_timeout_ms: Annotated[int, typer.Option(help="Timeout of each model call the cxr entry makes.")] = 60_000,
    max_image_bytes: Annotated[int, typer.Option(help="Largest item the entry accepts (encoded IMAGE bytes, or 4 bytes "
                                                      "per PIXELS value); larger ones are refused per item before "
                                                      "they reach another model.")] = MAX_IMAGE_BYTES,
    entry_metrics: Annotated[bool, typer.Option(help="The cxr entry's Prometheus metrics (input mix, refusals by "
                                                     "reason, score histograms, entry latency; docs/monitoring.md) "
                                                     "beside Triton's own.")] = True,
    shadow: Annotated[str | None, typer.Option(
        help="A challenger to shadow-score beside the bundle (a served-bundle directory or models:/<name>@<alias>, "
             "e.g. @challenger): the entry answers with the bundle and sends --shadow-fraction of the scored "
             "items to the challenger in the background; cxrlt shadow report reads the agreement. "
             "models:/<name>/none (what the rollout ConfigMap holds when nothing is shadowed) means none.")] = None,
    shadow_fraction: Annotated[float, typer.Option(help="Share of scored items the challenger scores too.")] = 0.1,
    shadow_queue: Annotated[int, typer.Option(help="Items in flight to the challenger at most; sampled items "
                                                   "beyond that are dropped and counted.")] = 16,
    shadow_threshold: Annotated[float, typer.Option(help="Operating threshold at which a finding's flip between "
                                                         "champion and challenger is counted.")] = 0.5,
    summary_file: Annotated[Path | None, typer.Option("--summary", help="Also write the build summary (models, "
                                                                        "version) as JSON here.")] = None,
) -> None:
    """Build the Triton model repository: preprocess, router, view ensembles, zero-shot head, cxr entry point (and,
    with --shadow, the challenger's models prefixed shadow_).

    Writes only OUT (and --summary if given): a registry bundle is downloaded into a temporary directory ($TMPDIR)
    that is removed afterwards, so the command runs in a pod whose only writable paths are OUT and /tmp. An alias is
    resolved to one version once; the files and the served MODEL_VERSION both come from that version."""
    import tempfile

    from pydantic import ValidationError

    from serving.repository import ServingOptions, build_repository

    try:
        options = ServingOptions(
            onnx_runtime=onnx_runtime.value, device=device.value, tensorrt=tensorrt, precision=precision.value,
            ort_threads=ort_threads,
            max_batch=max_batch, max_queue=max_queue, queue_timeout_ms=queue_timeout_ms, bls_timeout_ms=bls_timeout_ms,
            max_image_bytes=max_image_bytes, entry_metrics=entry_metrics, shadow_fraction=shadow_fraction,
            shadow_queue=shadow_queue, shadow_threshold=shadow_threshold,
            **({"instances": instances} if instances else {}))
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: {e['msg']}" for e in exc.errors()))
    def fetched(source: str, tmp: str) -> tuple[Path, str | None]:
        """A bundle's directory and served version: a registry URI is resolved once and downloaded verified."""
        if not source.startswith("models:/"):
            return Path(source), None
        from cxrlt.registry import download_verified_bundle, resolve_version

        name, number = resolve_version(source)
        return download_verified_bundle(name, number, tmp), f"{name}/{number}"

    if shadow is not None and shadow.startswith("models:/") and shadow.rstrip("/").endswith("/none"):
        shadow = None
    with tempfile.TemporaryDirectory(prefix="cxrlt-bundle-") as tmp:
        bundle_dir, version = fetched(bundle, f"{tmp}/bundle")
        shadow_dir, shadow_version = fetched(shadow, f"{tmp}/shadow") if shadow else (None, None)
        if shadow_version is not None and shadow_version == version:
            _fail(f"--shadow names the served version itself ({version}): shadow a different version")
        summary = build_repository(bundle_dir, out, options, version, shadow_dir, shadow_version)
    if summary_file is not None:
        summary_file.write_text(json.dumps(summary, indent=2))
    typer.echo(f"model repository {out}: {', '.join(summary['models'])} ({onnx_runtime} ONNX on {device}, "
               f"{options.instances} instance(s) x {ort_threads} thread(s), version "
               f"{summary['model_version']}"
               + (f"; shadow-scoring {summary['shadow_version']} on {shadow_fraction:.0%} of the items"
                  if shadow else "") + ")")


@serve_app.command("rollout")
def serve_rollout(
    version: Annotated[str, typer.Option(
        help="@alias (resolved once, now) or a version number of the registered model.")] = "@champion",
    model_name: Annotated[str, typer.Option(help="Registered model.")] = REGISTERED_MODEL,
    tracking_uri: Annotated[str | None, typer.Option(envvar="MLFLOW_TRACKING_URI", help="MLflow URI.")] = None,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace of the Triton Deployment.")] = "cxrlt",
    shadow: Annotated[str | None, typer.Option(
        help="Also pin a challenger that every replica shadow-scores beside the served version (@alias or a "
             "number; none: stop shadow scoring) [default: leave it as it is].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Resolve and print; change nothing.")] = False,
) -> None:
    """Pin the cluster's Triton Deployment to one registered version and roll its pods (prints JSON).

    The version goes into the cxrlt-rollout ConfigMap that every replica's init container reads, and the pod
    template's cxrlt.io/model-version annotation changes, which starts the rolling update."""
    from cxrlt.ops.rollout import rollout

    result = rollout(version, model_name, tracking_uri, namespace=namespace, dry_run=dry_run, shadow=shadow)
    typer.echo(json.dumps(result))


@serve_app.command("up")
def serve_up(
    repository: Annotated[Path, typer.Option(help="Model repository (cxrlt serve build).")],
    name: Annotated[str, typer.Option(help="Server name (state under ~/.cache/cxrlt/servers/NAME).")] = "default",
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0 = a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0 = a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port (0 = a free one).")] = 8002,
    production: Annotated[bool, typer.Option(
        "--production/--development",
        help="Production: a fixed repository (model control mode none; nobody can load or unload models) on "
             "127.0.0.1 behind an nginx front door on the given ports, which ends TLS and answers every API but "
             "health, metadata and inference only to an admin header whose key is kept in the server's state "
             "file (never on a command line). Development: explicit mode, for local work.")] = False,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM server certificate: gRPC over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA: clients must present a certificate it signed (mutual TLS).")] = None,
) -> None:
    """Start the bundled tritonserver (creating the serving environment on first use) and wait until ready."""
    from serving.server import ServerTLS, start

    if bool(tls_cert) != bool(tls_key):
        _fail("--tls-cert and --tls-key go together")
    tls = ServerTLS(tls_cert, tls_key, tls_ca) if tls_cert else None
    if tls_ca and not tls:
        _fail("--tls-ca needs --tls-cert and --tls-key")
    h = start(repository, name, host, http_port, grpc_port, metrics_port, production=production, tls=tls)
    typer.echo(f"triton ready: gRPC {h.grpc_url}{' (TLS)' if h.tls else ''}, HTTP {h.http_url}, metrics "
               f"{h.host}:{h.metrics_port} (pid {h.pid}, log {h.log_file}, "
               f"{'production: model control none, behind the front door' if h.production else 'development'})")


@serve_app.command("front-door")
def serve_front_door(
    out: Annotated[Path, typer.Option(help="nginx.conf to write (mode 0600: it holds the admin key).")],
    admin_key_file: Annotated[Path | None, typer.Option(
        help="File holding the admin key; without it the key is read from $TRITON_ADMIN_KEY.")] = None,
    listen: Annotated[str, typer.Option(help="Address the front door listens on.")] = "0.0.0.0",
    http_port: Annotated[int, typer.Option(help="Public HTTP port (health for probes; admin).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="Public gRPC port (inference; admin).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Public metrics port (/metrics).")] = 8002,
    triton_http_port: Annotated[int, typer.Option(help="tritonserver's HTTP port on 127.0.0.1.")] = 18000,
    triton_grpc_port: Annotated[int, typer.Option(help="tritonserver's gRPC port on 127.0.0.1.")] = 18001,
    triton_metrics_port: Annotated[int, typer.Option(help="tritonserver's metrics port on 127.0.0.1.")] = 18002,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM server certificate: gRPC over TLS.")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    tls_ca: Annotated[Path | None, typer.Option(
        help="PEM CA: clients must present a certificate it signed (mutual TLS).")] = None,
    temp_dir: Annotated[Path, typer.Option(help="Where nginx keeps its pid and temporary files (writable).")] = Path(
        "/tmp"),
    max_request_mb: Annotated[int, typer.Option(
        help="Largest request body in MiB, refused before it reaches Triton.")] = 256,
) -> None:
    """Write the production front door's nginx configuration (run it with: nginx -e stderr -c OUT).

    tritonserver reads its restricted-API keys only from its command line, which anyone who can list the node's
    processes reads. In production it listens on 127.0.0.1 and restricts nothing; this front door is the pod's one
    listener: it ends TLS, passes health, metadata and inference, and answers every other API only to requests that
    carry the admin key (header cxrlt-admin-key; gRPC: triton-grpc-protocol-cxrlt-admin-key). The TLS files are
    read by nginx when it starts, from the paths given here."""
    from serving.front_door import Ports, TLSFiles, admin_key_from, nginx_config, write_config

    if bool(tls_cert) != bool(tls_key) or (tls_ca and not tls_cert):
        _fail("--tls-cert and --tls-key go together, and --tls-ca needs them")
    config = nginx_config(Ports(listen, http_port, grpc_port, metrics_port),
                          Ports("127.0.0.1", triton_http_port, triton_grpc_port, triton_metrics_port),
                          admin_key_from(admin_key_file), temp_dir,
                          TLSFiles(tls_cert, tls_key, tls_ca) if tls_cert and tls_key else None,
                          max_request_mb * 1024 * 1024)
    write_config(out, config)
    typer.echo(f"front door configuration {out}: gRPC {listen}:{grpc_port}{' (TLS)' if tls_cert else ''}, HTTP "
               f"{listen}:{http_port}, metrics {listen}:{metrics_port} -> tritonserver on 127.0.0.1")


@serve_app.command("down")
def serve_down(name: Annotated[str, typer.Option(help="Server name.")] = "default") -> None:
    """Drain and stop a server started by cxrlt serve up."""
    from serving.server import stop

    typer.echo("stopped" if stop(name) else f"no server named {name!r} is recorded")


@app.command("infer")
def infer_cmd(
    files: Annotated[list[Path], typer.Argument(help="PNG or DICOM files.")],
    url: Annotated[str, typer.Option(help="Triton gRPC address HOST:PORT.")] = "127.0.0.1:8001",
    tls_ca: Annotated[Path | None, typer.Option(help="PEM CA of the server's certificate: connect over TLS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM client certificate (mutual TLS).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Also write one row per item (source, view, "
                                                               "error, every probability by class name).")] = None,
    timeout: Annotated[float, typer.Option(help="Per-call timeout in seconds.")] = 30.0,
    top: Annotated[int, typer.Option(help="Known findings per image in the table (all unseen ones follow).")] = 8,
    labels: Annotated[Path | None, typer.Option(help="Label CSV (ImageID + class columns, e.g. a dev or synthetic "
                                                     "test set): the table marks findings that are truly present "
                                                     "and lists true findings the table left out.")] = None,
) -> None:
    """Send images to the served cxr model over gRPC and print the findings (known and unseen) of every item.

    Every item is reported, also missing files and refused images (with the reason); the exit code is 1 when any
    item failed, 0 when all were scored."""
    from serving.client import CXRClient

    truth: dict[str, set[str]] = {}
    if labels is not None:
        from cxrlt.data.tables import read_label_sets

        truth = read_label_sets(labels)
    from serving.client import TLSOptions

    if (tls_cert or tls_key) and not tls_ca:
        _fail("--tls-cert/--tls-key need --tls-ca")
    client = CXRClient(url, timeout=timeout, tls=TLSOptions(tls_ca, tls_cert, tls_key) if tls_ca else None)
    try:
        results = client.infer_files(files)
        bands = client.bands()
    except Exception as exc:  # tritonclient raises its own exception type with the server's message
        _fail(f"inference failed: {exc}")
    finally:
        client.close()
    failed = [r for r in results if r.error]
    if csv_out is not None:
        import pandas as pd

        pd.DataFrame([{"source": r.source, "view": r.view, "view_confidence": r.view_confidence, "error": r.error,
                       **r.known, **r.unseen} for r in results]).to_csv(csv_out, index=False)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in results], indent=2))
        if failed:
            raise typer.Exit(1)
        return
    for r in results:
        typer.echo(f"\n{r.source}  view={r.view} ({r.view_confidence:.2f})  model={r.model_version}")
        if r.error:
            typer.secho(f"  error: {r.error}", fg=typer.colors.RED)
            continue
        present = truth.get(Path(r.source).name)
        typer.echo(f"  {'finding':<32} {'probability':>11}  {'kind':<7} {'band':<9}" + (" truth" if truth else ""))
        known = [f for f in r.findings() if f.kind == "known"][:top]
        shown = known + [f for f in r.findings() if f.kind == "unseen"]  # top known, then every unseen
        for f in shown:
            band = bands.get(f.name, "zero-shot" if f.kind == "unseen" else "-")
            mark = ("" if present is None else ("present" if f.name in present else "-")) if truth else ""
            typer.echo(f"  {f.name:<32} {f.probability:>11.3f}  {f.kind:<7} {band:<9} {mark}".rstrip())
        if present is not None:
            missed = sorted(present - {f.name for f in shown})
            typer.echo(f"  truly present, not in the table above: {', '.join(missed) if missed else 'none'}")
        elif truth:
            typer.echo("  (not in the label CSV: no truth to show)")
    if failed:
        typer.secho(f"\n{len(failed)} of {len(results)} items failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command("gateway")
def gateway_cmd(
    allow_calling: Annotated[list[str], typer.Option("--allow-calling", help="AE title allowed to send images "
                                                                             "(repeat, or separate by commas, for "
                                                                             "several); required.")],
    send_to: Annotated[str, typer.Option(help="Where the SRs go: AE_TITLE@HOST:PORT (C-STORE), or the base URL of "
                                              "a DICOMweb service (STOW-RS), e.g. http://pacs:8042/dicom-web.")],
    spool: Annotated[Path, typer.Option(help="Folder of the on-disk queue (images waiting, reports waiting, items "
                                             "set aside); keep it on a persistent volume.")],
    ae_title: Annotated[str, typer.Option(help="The gateway's own AE title (senders must call it).")] = "CXRLT",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="DICOM port to listen on (0: a free one, printed).")] = 11112,
    url: Annotated[str, typer.Option(help="Triton gRPC address HOST:PORT.")] = "127.0.0.1:8001",
    tls_ca: Annotated[Path | None, typer.Option(help="PEM CA of the server's certificate: connect over TLS.")] = None,
    tls_cert: Annotated[Path | None, typer.Option(help="PEM client certificate (mutual TLS).")] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM key of --tls-cert.")] = None,
    threshold: Annotated[float, typer.Option(help="Operating threshold: a finding at or above it is reported "
                                                  "present (the probabilities are calibrated).")] = 0.5,
    thresholds: Annotated[Path | None, typer.Option(help="JSON or YAML mapping of finding name -> threshold, for the "
                                                         "findings whose threshold differs.")] = None,
    max_queue: Annotated[int, typer.Option(help="Items the spool may hold; beyond it images are refused with "
                                                "0xA700 (the sender retries later).")] = 1000,
    timeout: Annotated[float, typer.Option(help="Per-call timeout (Triton, destination), seconds.")] = 30.0,
    max_backoff: Annotated[float, typer.Option(help="Longest wait between retries while Triton or the destination "
                                                    "is down, seconds.")] = 60.0,
    institution: Annotated[str | None, typer.Option(help="Institution Name written into the SRs.")] = None,
) -> None:
    """DICOM gateway: receive CR/DX images by C-STORE, score them on the served model, and store one DICOM SR
    (TID 1500, unverified) per image at --send-to.

    Runs until interrupted (SIGTERM/SIGINT). Images wait in --spool until their report is stored: a Triton or PACS
    outage delays reports but loses none, also across a restart. Logs name images by a digest, never by patient
    data. docs/hospital.md explains the setup and how to read the reports."""
    import logging
    import signal
    import threading

    import yaml
    from pydantic import ValidationError

    from serving.client import TLSOptions
    from serving.gateway import Destination, GatewayConfig, run

    if (tls_cert or tls_key) and not tls_ca:
        _fail("--tls-cert/--tls-key need --tls-ca")
    per_finding = {}
    if thresholds is not None:
        if not thresholds.is_file():
            _fail(f"--thresholds {thresholds}: no such file")
        per_finding = yaml.safe_load(thresholds.read_text()) or {}
        if not isinstance(per_finding, dict):
            _fail(f"--thresholds {thresholds}: expected a mapping of finding name -> threshold")
    try:
        config = GatewayConfig(
            ae_title=ae_title, host=host, port=port, triton_url=url,
            allowed_calling=tuple(a.strip() for item in allow_calling for a in item.split(",") if a.strip()),
            tls=TLSOptions(tls_ca, tls_cert, tls_key) if tls_ca else None, destination=Destination.parse(send_to),
            spool=spool, max_queue=max_queue, threshold=threshold, thresholds=per_finding, timeout_s=timeout,
            max_backoff_s=max_backoff, institution_name=institution)
    except ValidationError as exc:
        _fail("; ".join(f"{'.'.join(map(str, e['loc'])) or 'gateway'}: {e['msg']}" for e in exc.errors()))
    # the gateway's own messages at INFO; the libraries' (pynetdicom, highdicom) only from WARNING: at INFO they
    # print UIDs and dataset contents
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cxrlt").setLevel(logging.INFO)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stats = run(config, stop)
    typer.echo(f"gateway stopped: {stats.received} received, {stats.refused} refused, {stats.scored} scored, "
               f"{stats.reported} reports stored")
