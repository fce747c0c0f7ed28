"""``make demo``: the whole system on the embedded default, end to end, on synthetic data.

synthesise -> MLflow server -> training pipeline on kfp.local (validate, preprocess, split, members + router +
zero-shot CLIP in parallel, ensemble weights, evaluate, gate, ONNX export, register challenger) -> promote to
champion -> Triton model repository from ``models:/cxrlt-bundle@champion`` -> tritonserver -> PNG and DICOM images
over gRPC -> findings table. Meanwhile, at idle CPU priority (it takes the cycles the first run leaves), a retraining
with a longer frontal PCAM schedule that lost 30 % of its training laterals (better on frontal images, worse on
lateral ones) is registered by its gate and refused at promotion by the subgroup rule. Everything it started is
stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cxrlt.platform import CHAMPION_ALIAS, PROMOTION_MARGIN, REGISTERED_MODEL

CHAMPION_URI = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"
#: the share of the training split's lateral images the demo's second retraining loses
LATERAL_REMOVAL = 0.3
#: its zero-shot CLIP's epochs (the champion's: DemoOptions.zeroshot_epochs); promotion compares the known findings
CHALLENGER_ZEROSHOT_EPOCHS = 2
#: its frontal PCAM member's epochs (the tiny profile's: 6, where its validation mAP was still rising): the change
#: that makes the retraining better on frontal images, two thirds of the dev set
CHALLENGER_FRONTAL_PCAM_EPOCHS = 10
#: its pipeline root (own shared volume: the two runs write no file in common)
CHALLENGER_ROOT = "challenger_pipeline"

#: What the quiet mode shows of a pipeline run: task starts and ends, per-epoch training progress, member results,
#: errors. Everything (kfp.local's executor JSON included) goes to the log file.
_SHOWN = re.compile(r"Executing task|train-member: (training|reused)|finished with status|epoch \d+/\d+ loss|best mAP|"
                    r"best val|Traceback|Error|"
                    r"FAILED|pipeline finished")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: kfp.local's logging prefix, and the KFP executor's (a step's own log lines, such as in-process training's)
_PREFIX = re.compile(r"^.*? - INFO - |^\[KFP Executor [^\]]*\]: ")


def shown(raw: str) -> str | None:
    """The part of one output line the quiet mode prints (ANSI colours, progress-bar frames and the logging prefix
    removed), or None when only the log file keeps it."""
    line = _ANSI.sub("", raw.split("\r")[-1]).strip()
    return _PREFIX.sub("", line)[:160] if _SHOWN.search(line) else None


def _step(n: int, total: int, title: str) -> None:
    print(f"\n=== [{n}/{total}] {title}", flush=True)


class _QuietLog:
    """An output sink for :func:`cxrlt.ops.launch.launch_local`: every line to the log file, the lines :func:`shown`
    selects to the screen."""

    def __init__(self, log):
        self.log = log

    def write(self, raw: str) -> None:
        self.log.write(raw)
        if (line := shown(raw)) is not None:
            print("  " + line, flush=True)

    def flush(self) -> None:
        self.log.flush()


def _cxrlt(*args: str, env: dict | None = None, log: Path | None = None, verbose: bool = True) -> None:
    """Run ``cxrlt ARGS``; unless ``verbose``, print only the lines :func:`shown` selects and keep the whole output
    in ``log`` (a failure raises with the output's tail)."""
    print("$ cxrlt " + " ".join(args), flush=True)
    if verbose or log is None:
        subprocess.run([sys.executable, "-m", "cxrlt.cli", *args], check=True, env=env)
        return
    from cxrlt.ops.launch import launch_local

    print(f"  (full output: {log}; --verbose shows it here)", flush=True)
    with open(log, "a") as sink:
        launch_local(list(args), out=_QuietLog(sink), env=env)


def _print_gate(run: Path, title: str) -> bool:
    """Print the evaluation the gate saw and its decision; return whether it passed."""
    evidence = json.loads((run / "gate" / "evidence").read_text())
    summary = json.loads((run / "evaluate" / "report" / "summary.json").read_text())
    scored = json.loads((run / "evaluate" / "report" / "metrics.json").read_text())["n_classes_scored"]
    print(f"{title} (synthetic dev set; {scored} known classes with positives there):")
    for c in evidence["checks"]:
        mark = "pass" if c["passed"] else "FAIL"
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        print(f"  {c['metric']:<24} {value:>7} {c['op']} {c['threshold']:<5}  {mark}")
    print(f"  unseen mAP {summary['unseen_mAP']:.3f} vs chance {summary['unseen_prevalence']:.3f}; per class: "
          + ", ".join(f"{k} {v:.2f}" for k, v in summary.get("unseen_AP", {}).items()))
    subgroups = run / "evaluate" / "report" / "subgroups.json"
    if subgroups.exists():
        print("  by subgroup (mAP, 95 % CI stratified by rarest finding; flags say why a number is missing):")
        for row in json.loads(subgroups.read_text()):
            ci = row["ci95"].get("mAP")
            value = "n/a" if row["mAP"] is None else f"{row['mAP']:.3f}"
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci and None not in ci else ""
            print(f"    {row['attribute']:<10} {row['group']:<8} n={row['n_images']:<5} mAP {value:>5} {interval:<16} "
                  + "; ".join(row["flags"]))
    print(f"  gate: {'PASSED' if evidence['passed'] else 'REFUSED'}", flush=True)
    return bool(evidence["passed"])


@dataclass(frozen=True)
class DemoOptions:
    """What ``cxrlt demo`` runs (its options and help are in ``cxrlt.cli.demo``)."""

    workdir: Path = Path("demo_run")
    n_images: int = 2500
    epochs: int = 0
    zeroshot_epochs: int = 8
    config: Path = Path("configs/tiny.yaml")
    verbose: bool = False
    no_challenger: bool = False  # skip the second retraining and its refused promotion
    containers: bool = False


def run_demo(args: DemoOptions) -> None:
    """The demo (see the module docstring); everything it started is stopped at the end, also on failure."""
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    state, log = work / "state", work / "demo.log"
    env = {**os.environ, "CXRLT_STATE_DIR": str(state), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if not args.verbose:
        env["TQDM_MININTERVAL"] = "5"  # progress bars in the log file: a line every few seconds, not per batch
    os.environ.update({k: env[k] for k in ("CXRLT_STATE_DIR", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")})
    from cxrlt.ops import mlflow_server
    from serving import server as triton

    data, t0, total = work / "data", time.time(), 10
    runner = ["--runner", "docker"] if args.containers else []
    if args.containers:
        from cxrlt.ops.containers import engine_command, image_exists
        from cxrlt.platform import IMAGES

        missing = [IMAGES[k] for k in ("train", "tools", "serve_cpu") if not image_exists(engine_command(), IMAGES[k])]
        if missing:
            raise SystemExit(f"--containers needs the images {', '.join(missing)}: run make images")
    quiet = {"log": log, "verbose": args.verbose}
    started_mlflow = started_triton = False
    challenger = None
    try:
        _step(1, total, "synthetic CXR-LT dataset in PadChest's shape (synthetic data, not PadChest)")
        if not (data / "CXRLT_2026_training.csv").exists():
            _cxrlt("data", "synth", "--out", str(data), "--n-images", str(args.n_images), "--size", "64",
                   "--workers", "2", env=env)
        _step(2, total, "MLflow server (SQLite + local artifacts, 127.0.0.1)")
        ml = mlflow_server.start(work / "mlflow", port=0, state_dir=state)
        started_mlflow = True
        env["MLFLOW_TRACKING_URI"] = ml["tracking_uri"]
        print(f"MLflow UI: {ml['tracking_uri']}", flush=True)
        from cxrlt import evidence

        keys = work / "keys"  # the registration step signs the gate's evidence; promotion and serve build verify it
        if not (keys / evidence.SIGNING_KEY_FILE).exists():
            evidence.generate_keys(keys)
        env[evidence.SIGNING_KEY_ENV] = str(keys / evidence.SIGNING_KEY_FILE)
        env[evidence.VERIFY_KEY_ENV] = str(keys / evidence.VERIFY_KEY_FILE)
        print(f"evidence signing keys: {keys} (cxrlt registry keygen)", flush=True)
        if not args.no_challenger:
            # The two pipelines share the cores: the second runs at idle priority and so takes the cycles the first
            # leaves (imports, single-threaded steps, the evaluation); the first keeps the cores whenever it wants them.
            _step(3, total, f"a retraining with a longer frontal PCAM schedule ({CHALLENGER_FRONTAL_PCAM_EPOCHS} "
                            f"epochs) that lost {LATERAL_REMOVAL:.0%} of its training split's lateral images starts "
                            "in the background at idle CPU priority (its verdict comes in step 9)")
            challenger = _start_lateral_challenger(work, data, args, env, runner)
        where = "DockerRunner: each component in its image" if args.containers else "SubprocessRunner"
        _step(4, total, f"training pipeline on kfp.local ({where}): validate, preprocess, split, zero-shot CLIP + "
                        "view members + router (two at a time), ensemble, calibrate, evaluate, gate, register")
        root = work / "pipeline"
        before = _runs(root)
        _cxrlt("pipeline", "run", "--data", str(data), "--config", str(args.config.resolve()),
               "--root", str(root), "--epochs", str(args.epochs), "--zeroshot-epochs",
               str(args.zeroshot_epochs), "--member-threads", "1", *runner, env=env, **quiet)
        main_run = _newest(_runs(root) - before)
        if not _print_gate(main_run, "challenger"):
            raise SystemExit("the challenger did not pass the gate, so there is nothing to promote; see the "
                             f"evaluation report under {main_run / 'evaluate' / 'report'}")
        registered = _registered_version(main_run)
        _step(5, total, f"promote challenger (version {registered}) -> champion (its signed gate evidence verified; "
                        "non-inferiority on the dev set, overall and in every subgroup)")
        _cxrlt("registry", "promote", "--labels", str(data / "CXRLT_2026_dev_labels.csv"), "--config",
               str(args.config.resolve()), "--version", registered, "--report",
               str(work / "promotion_report.html"), env=env)
        from cxrlt.registry import model_card

        card = model_card(f"@{CHAMPION_ALIAS}", tracking_uri=env["MLFLOW_TRACKING_URI"],
                          html_out=work / "model_card.html")
        print(f"model card of the champion (cxrlt registry card @{CHAMPION_ALIAS}): {work / 'model_card.html'} "
              f"({len(card.splitlines())} lines of Markdown, also the version's description in MLflow)")
        print(f"evaluation report: {main_run / 'evaluate' / 'report' / 'report.html'}; "
              f"promotion report: {work / 'promotion_report.html'}", flush=True)
        _step(6, total, f"Triton model repository from {CHAMPION_URI} (signature and every file verified)")
        _cxrlt("serve", "build", "--bundle", CHAMPION_URI, "--out", str(work / "model_repository"),
               env=env)
        if args.containers:
            from cxrlt.ops.containers import start_triton
            from cxrlt.ops.procs import free_port
            from cxrlt.platform import IMAGES

            _step(7, total, f"tritonserver in the serve image {IMAGES['serve_cpu']} (repository mounted read-only, "
                            "uid 1000, read-only root filesystem)")
            ports = [free_port() for _ in range(3)]
            start_triton(work / "model_repository", "cxrlt-demo-triton", IMAGES["serve_cpu"], *ports)
            grpc_url, metrics_url = f"127.0.0.1:{ports[1]}", f"http://127.0.0.1:{ports[2]}/metrics"
        else:
            _step(7, total, "tritonserver from the nvidia-pytriton wheel (python backend + ONNX Runtime)")
            handle = triton.start(work / "model_repository", name="demo", http_port=0, grpc_port=0, metrics_port=0,
                                  state_dir=state)
            grpc_url, metrics_url = handle.grpc_url, f"http://{handle.host}:{handle.metrics_port}/metrics"
        started_triton = True
        print(f"Triton ready: gRPC {grpc_url}, metrics {metrics_url}")
        _step(8, total, "send PNG and DICOM images over gRPC; the truth column marks findings present in the "
                        "synthetic ground truth")
        import cv2
        import pandas as pd

        from cxrlt.data.dicom import array_to_dicom

        test = pd.read_csv(data / "CXRLT_2026_test_labels.csv", dtype={"ImageID": str})
        meta = pd.read_csv(data / "padchest_metadata.csv", dtype=str).set_index("ImageID")
        # one frontal and one lateral image with findings, so that the table shows both views and real positives
        abnormal = test.loc[test["Normal"] == 0, "ImageID"]
        ids = [next(i for i in abnormal if meta.loc[i, "Projection"] == p) for p in ("PA", "L")]
        pngs = [data / "images" / i for i in ids]
        dcm = array_to_dicom(cv2.imread(str(pngs[0]), cv2.IMREAD_UNCHANGED), work / "example.dcm", monochrome1=True)
        _cxrlt("infer", *map(str, [*pngs, dcm]), "--url", grpc_url, "--top", "6", "--labels",
               str(data / "CXRLT_2026_test_labels.csv"), env=env)
        if challenger is not None:
            _step(9, total, "the retraining: registered by its gate, refused at promotion by the subgroup rule "
                            "(lateral images); champion unchanged")
            _finish_lateral_challenger(*challenger, data, args.config.resolve(), env)
        _step(10, total, "done")
        print(f"Finished in {time.time() - t0:.0f} s. Everything above ran on synthetic data.")
        print(f"- pipeline outputs (metrics.json, plots, validation report): {work / 'pipeline'}")
        print(f"- MLflow database and artifacts: {work / 'mlflow'} (`cxrlt mlflow up --data {work / 'mlflow'}` "
              "to browse the UI again)")
        print(f"- model repository: {work / 'model_repository'}; full log: {log}")
        print(f"- findings as a DICOM SR in a PACS: docs/hospital.md, 'Try it locally' (Orthanc, `cxrlt gateway` and "
              f"storescu with {work / 'model_repository'} and {work / 'example.dcm'})")
    finally:
        if challenger is not None and challenger[0].poll() is None:
            challenger[0].terminate()
            challenger[0].wait(30)
        if started_triton and args.containers:
            from cxrlt.ops.containers import stop_container

            stop_container("cxrlt-demo-triton")
        elif started_triton:
            triton.stop("demo", state_dir=state)
        if started_mlflow:
            mlflow_server.stop(state_dir=state)
        print("stopped the servers this demo started", flush=True)


def _runs(root: Path) -> set[Path]:
    return set(root.glob("cxrlt-training-*")) if root.is_dir() else set()


def _newest(runs: set[Path]) -> Path:
    if not runs:
        raise SystemExit("the pipeline run left no run folder")
    return max(runs, key=lambda p: p.stat().st_mtime_ns)


def _registered_version(run: Path) -> str:
    """The registry version the run's register step created (its KFP output)."""
    return str(json.loads((run / "register" / "executor_output.json").read_text())["parameterValues"]["Output"])


def _start_lateral_challenger(work: Path, data: Path, args: DemoOptions, env: dict, runner: list[str]):
    """Start a retraining made of two honest changes: the frontal PCAM member trains for
    :data:`CHALLENGER_FRONTAL_PCAM_EPOCHS` epochs (a profile with that override, written beside the demo's), and the
    training split lost :data:`LATERAL_REMOVAL` of its lateral images (validation keeps them all); the zero-shot CLIP
    trains for :data:`CHALLENGER_ZEROSHOT_EPOCHS` (promotion compares the known findings). It runs in the background
    (its output goes to a log file); returns what :func:`_finish_lateral_challenger` needs."""
    import yaml

    from cxrlt.config import load_config
    from cxrlt.data.split import split_frames
    from cxrlt.ops.procs import idle_priority

    cfg = load_config(args.config)["data"]
    train, _, _ = split_frames(data / "CXRLT_2026_training.csv", data / "padchest_metadata.csv", None,
                               cfg["val_fraction"], cfg["split_seed"])
    removal = work / "lateral_removal.csv"
    lateral = train.loc[train["view"] == "lateral", ["ImageID"]]
    lateral.sample(frac=LATERAL_REMOVAL, random_state=0).to_csv(removal, index=False)
    profile = yaml.safe_load(Path(args.config).read_text())
    overrides = profile.setdefault("train", {}).setdefault("overrides", {})
    overrides["frontal/pcam"] = {**overrides.get("frontal/pcam", {}), "epochs": CHALLENGER_FRONTAL_PCAM_EPOCHS}
    challenger_profile = work / "challenger_profile.yaml"
    challenger_profile.write_text(yaml.safe_dump(profile, sort_keys=False))
    log, root = work / "challenger.log", work / CHALLENGER_ROOT
    cmd = [sys.executable, "-m", "cxrlt.cli", "pipeline", "run", "--data", str(data), "--config",
           str(challenger_profile), "--root", str(root), "--epochs", str(args.epochs),
           "--zeroshot-epochs", str(CHALLENGER_ZEROSHOT_EPOCHS), "--member-threads", "1", "--removal", str(removal),
           *runner]
    print("$ cxrlt " + " ".join(cmd[3:]) + f"  (idle priority; output: {log})", flush=True)
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, preexec_fn=idle_priority)
    return proc, log, root


def _finish_lateral_challenger(proc: subprocess.Popen, log: Path, root: Path, data: Path, config: Path,
                               env: dict) -> None:
    """Wait for the retraining; its gate must register it (its overall numbers clear the floor) and promotion must
    refuse it for the lateral images, so the registry's champion does not move; whether it was better overall is
    printed as measured."""
    from cxrlt.registry import resolve_version

    if proc.wait():
        print("\n".join(log.read_text().splitlines()[-40:]))
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    run = _newest(_runs(root))
    reused = [line.split(": ", 1)[1] for line in log.read_text().splitlines() if "train-member: reused" in line]
    print("  " + ("\n  ".join(reused) if reused else "no member was reused"), flush=True)
    if not _print_gate(run, "retraining (longer frontal schedule, 30 % fewer laterals)"):
        raise SystemExit("the retraining did not pass its gate, so promotion has nothing to judge; "
                         f"see {log}")
    report = log.parent / "challenger_promotion_report.html"
    cmd = [sys.executable, "-m", "cxrlt.cli", "registry", "promote", "--labels",
           str(data / "CXRLT_2026_dev_labels.csv"), "--config", str(config), "--version", _registered_version(run),
           "--report", str(report)]
    print("$ cxrlt " + " ".join(cmd[3:]), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"promotion failed: {done.stderr[-2000:]}")
    decision = json.loads(done.stdout)
    better = "better" if decision["diff"] > 0 else "not better"
    print(f"  overall: mAP challenger - champion {decision['diff']:+.4f}, 95 % CI "
          f"[{decision['ci95'][0]:.4f}, {decision['ci95'][1]:.4f}] (margin -{PROMOTION_MARGIN}): {better} overall")
    print("  by subgroup (challenger - champion, paired 95 % CI; gated groups have enough images and positives):")
    for row in decision["subgroups"]:
        ci = f"[{row['ci95'][0]:+.4f}, {row['ci95'][1]:+.4f}]" if row.get("ci95") else ""
        print(f"    {row['attribute']:<10} {row['group']:<8} n={row['n_images']:<4} {row['metric']} "
              f"{row['diff']:+.4f} {ci:<20} mECE {row['challenger_mECE']:.3f}  "
              f"{'gated' if row['gated'] else row.get('reason', 'not gated')}")
    print(f"  decision: {'PROMOTED' if decision['promoted'] else 'REFUSED'}: {decision['reason']}")
    print(f"  promotion report: {report}", flush=True)
    if decision["promoted"] or "refused in subgroups" not in decision["reason"]:
        raise SystemExit("the subgroup rule did not refuse the retraining")
    _, version = resolve_version(CHAMPION_URI, env["MLFLOW_TRACKING_URI"])
    print(f"  champion is still version {version}", flush=True)
