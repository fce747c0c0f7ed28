"""KFP components (python_func unit tests), the TrainJob launcher against a fake Kubernetes API, and the compiled
pipeline YAML."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.gate.component import gate
from components.split_projection.component import split_projection
from components.validate_data.component import validate_data
from cxrlt import platform as P
from cxrlt.ops.launch import launch_trainjob, local_command, trainjob_body

ROOT = Path(__file__).resolve().parents[1]


def _artifact(path):
    return SimpleNamespace(path=str(path), uri=str(path), metadata={})


GOOD = {"mAP": 0.4, "mAUROC": 0.85, "mECE": 0.1, "unseen_mAP": 0.12, "unseen_prevalence": 0.04}
THRESHOLDS = {"min_map": 0.3, "min_mauroc": 0.75, "max_ece": 0.2, "min_unseen_lift": 2.0}


class TestGate:
    def test_pass_and_evidence(self, tmp_path):
        art = _artifact(tmp_path / "evidence.json")
        assert gate.python_func(**GOOD, **THRESHOLDS, evidence=art) == "pass"
        evidence = json.loads((tmp_path / "evidence.json").read_text())
        assert evidence["passed"] is True and art.metadata["passed"]
        lift = next(c for c in evidence["checks"] if c["metric"].startswith("unseen"))
        assert lift["value"] == pytest.approx(3.0)  # 0.12 / 0.04

    @pytest.mark.parametrize(("metric", "value"), [("mAP", 0.2), ("mAUROC", 0.6), ("mECE", 0.3),
                                                   ("unseen_mAP", 0.06), ("unseen_mAP", float("nan"))])
    def test_fail_on_each_threshold(self, metric, value, tmp_path):
        art = _artifact(tmp_path / "evidence.json")
        assert gate.python_func(**{**GOOD, metric: value}, **THRESHOLDS, evidence=art) == "fail"
        failed = [c["metric"] for c in json.loads((tmp_path / "evidence.json").read_text())["checks"]
                  if not c["passed"]]
        assert len(failed) == 1 and failed[0].startswith(metric.split("_")[0])

    def test_zero_lift_disables_the_zero_shot_check(self, tmp_path):
        art = _artifact(tmp_path / "evidence.json")
        loose = {**THRESHOLDS, "min_unseen_lift": 0.0}
        assert gate.python_func(**{**GOOD, "unseen_mAP": 0.0}, **loose, evidence=art) == "pass"


class TestValidateData:
    def test_clean_data_returns_manifest_hash(self, synth_data, tmp_path):
        digest = validate_data.python_func(data_dir=str(synth_data), report=_artifact(tmp_path / "r"),
                                           min_positives=0)
        assert len(digest) == 16 and (tmp_path / "r" / "validation.json").exists()

    def test_faulty_data_fails_naming_the_defects(self, faulty_data, tmp_path):
        with pytest.raises(RuntimeError, match="unseen_leak"):
            validate_data.python_func(data_dir=str(faulty_data), report=_artifact(tmp_path / "r"), min_positives=0)


def test_preprocess_component_publishes_a_location_on_the_shared_volume(synth_data, tmp_path):
    """The cache is written on the shared volume (keyed by data hash and contract) and the artifact holds only its
    location and digest; a second run on the same data reuses it."""
    from components.preprocess.component import preprocess
    from cxrlt.dataplane import POINTER, resolve

    shared = tmp_path / "shared"
    art = _artifact(tmp_path / "cache")
    n = preprocess.python_func(data_dir=str(synth_data), data_hash="0123456789abcdef", shared_root=str(shared),
                               cache=art, size=16, workers=1)
    assert n == 400 and art.metadata["size"] == 16 and art.metadata["images"] == 400
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [POINTER]  # no image bytes in the artifact
    folder = resolve(tmp_path / "cache")
    assert folder.parent == shared / "caches" and folder.name.startswith("0123456789ab-16px-")
    assert (folder / "cache_config.json").exists() and len(list(folder.glob("*.png"))) == 400
    again = _artifact(tmp_path / "cache2")
    assert preprocess.python_func(data_dir=str(synth_data), data_hash="0123456789abcdef", shared_root=str(shared),
                                  cache=again, size=16, workers=1) == 400
    assert resolve(tmp_path / "cache2") == folder


def test_split_projection_component(synth_data, tmp_path):
    from cxrlt.dataplane import resolve

    art = _artifact(tmp_path / "splits")
    run_dir = tmp_path / "shared" / "runs" / "r1"
    summary = json.loads(split_projection.python_func(data_dir=str(synth_data), run_dir=str(run_dir), splits=art,
                                                      val_fraction=0.1, seed=42))
    assert resolve(tmp_path / "splits") == run_dir / "splits"
    assert (run_dir / "splits" / "train_frontal.csv").exists() and art.metadata["train"] == summary["images"]["train"]
    assert (run_dir / "splits" / "physician" / "train.csv").exists()  # both label sources, one split
    assert summary["label_sources"]["physician"]["train"] < summary["label_sources"]["all"]["train"]


def test_check_weights_component_fails_listing_every_missing_weight(tmp_path):
    from components.check_weights.component import check_weights

    raw = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    rows = json.loads(check_weights.python_func(config=str(ROOT / "configs" / "tiny.yaml"),
                                                report=_artifact(tmp_path / "ok")))
    assert {r["status"] for r in rows} == {"random"}
    raw["models"]["pcam"]["pretrained"] = str(tmp_path / "absent.pth")
    raw["zeroshot"]["pretrained"] = str(tmp_path / "absent_clip.pt")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RuntimeError) as err:
        check_weights.python_func(config=str(tmp_path / "p.yaml"), report=_artifact(tmp_path / "bad"))
    assert "pcam: weight file" in str(err.value) and "zeroshot: weight file" in str(err.value)
    report = json.loads(Path(_artifact(tmp_path / "bad").path).read_text())
    assert [r["status"] for r in report if r["network"] in ("pcam", "zeroshot")] == ["failed", "failed"]


class FakeCustomObjects:
    """Enough of kubernetes.client.CustomObjectsApi for the launcher: a job that runs, then ends as scripted."""

    def __init__(self, final: dict):
        self.created, self.polls, self.final = None, 0, final

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == P.TRAINER_API
        self.created = body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.polls += 1
        if self.polls < 3:
            return {"status": {"conditions": [{"type": "Created", "status": "True"}]}}
        return {"status": {"conditions": [self.final]}}


def test_trainjob_launcher_streams_status_until_complete():
    api = FakeCustomObjects({"type": "Complete", "status": "True"})
    messages = []
    body = trainjob_body("cxrlt-frontal-pcam-1", ["train", "--member", "frontal/pcam"], gpus_per_node=4)
    launch_trainjob(body, api=api, poll_s=0, log=messages.append)
    assert api.created["spec"]["runtimeRef"]["name"] == P.TRAINJOB_RUNTIME
    assert api.created["spec"]["trainer"]["image"] == P.IMAGES["train"]
    assert api.created["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "4"
    assert any("Complete=True" in m for m in messages)


def test_trainjob_launcher_fails_with_the_jobs_reason():
    api = FakeCustomObjects({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                             "message": "node 0 OOMKilled"})
    with pytest.raises(RuntimeError, match="BackoffLimitExceeded: node 0 OOMKilled"):
        launch_trainjob(trainjob_body("j", ["train"]), api=api, poll_s=0, log=lambda m: None)


def test_trainjob_body_validates_against_the_trainer_crd():
    import jsonschema

    crd = yaml.safe_load((ROOT / "tests/fixtures/kubeflow-trainer/trainer.kubeflow.org_trainjobs.yaml").read_text())
    jsonschema.validate(trainjob_body("j", ["train"], 2, 2, env={"A": 1}),
                        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_local_launcher_uses_torchrun_for_several_processes():
    assert local_command(["train"], 1)[1:3] == ["-m", "cxrlt.cli"]
    assert "torch.distributed.run" in local_command(["train"], 2) and "--nproc_per_node=2" in local_command(["x"], 2)


def test_compiled_pipelines(tmp_path):
    from pipelines.compile import compile_all

    paths = compile_all(tmp_path)
    docs = list(yaml.safe_load_all(paths[0].read_text()))
    assert len(docs) == 2, "IR + kubernetes platform spec"
    ir, platform = docs
    assert ir["pipelineInfo"]["name"] == "cxrlt-training"
    execs = ir["deploymentSpec"]["executors"]
    images = {e["container"]["image"] for e in execs.values()}
    assert images <= {P.IMAGES["train"], P.IMAGES["tools"]}
    assert not any("pip install" in " ".join(e["container"].get("command", [])) for e in execs.values())
    text = paths[0].read_text()
    assert "parameterIterator" in text and "register-challenger" in text and "nvidia.com/gpu" in text
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert any("emptyDirMounts" in e for e in k8s.values())
    assert any(s.get("secretName") == P.SECRETS["s3_pipeline"] for e in k8s.values()
               for s in e.get("secretAsEnv", []))
    promotion = next(yaml.safe_load_all(paths[1].read_text()))  # IR first, then its kubernetes platform spec
    assert promotion["pipelineInfo"]["name"] == "cxrlt-promotion"


def test_router_step_is_a_no_op_for_a_profile_without_router(tmp_path):
    """HPH has no router: the pipeline's router step records that and trains nothing; the jobs follow the profile."""
    from components.train_member.component import train_member
    from cxrlt.config import load_config, pipeline_jobs
    from cxrlt.dataplane import publish, read_location
    from cxrlt.ops.pipeline_steps import plan_run

    art = _artifact(tmp_path / "router")
    shared = tmp_path / "shared"
    plan_run(str(ROOT / "configs" / "tiny_hph.yaml"), str(shared), "r1")
    for name in ("c", "s"):
        (shared / name).mkdir(parents=True)
        publish(tmp_path / name, shared / name, name)
    score = train_member.python_func(view="", member="router", run_id="r1", data_dir=str(tmp_path),
                                     cache=_artifact(tmp_path / "c"), splits=_artifact(tmp_path / "s"), model=art,
                                     shared_root=str(shared))
    location = read_location(tmp_path / "router")
    assert score == 0.0 and art.metadata["skipped"] and location.metadata["networks"] == []
    assert not any(Path(location.path).iterdir())
    assert pipeline_jobs(load_config(ROOT / "configs" / "tiny_hph.yaml")) == [
        {"view": "mixed", "member": "mlp"}, {"view": "mixed", "member": "csra"}]
    assert len(pipeline_jobs(load_config(ROOT / "configs" / "tiny.yaml"))) == 4  # 2 views x (pcam+cait, swin)
    tiny = load_config(ROOT / "configs" / "tiny.yaml")
    with_mixed = load_config({**tiny, "ensemble": {**tiny["ensemble"], "mixed_members": True}})
    assert len(pipeline_jobs(with_mixed)) == 6  # + the mixed baseline


def test_trainjob_names_are_deterministic_and_a_retry_attaches():
    from cxrlt.ops.launch import trainjob_name

    args = ["train", "--member", "frontal/pcam", "--out", "/data/run/model"]
    name = trainjob_name("cxrlt-frontal-pcam", args, "s3://root/run-1/train-member/model")
    assert name == trainjob_name("cxrlt-frontal-pcam", list(args), "s3://root/run-1/train-member/model")
    assert name != trainjob_name("cxrlt-frontal-pcam", args, "s3://root/run-2/train-member/model")
    assert len(name) <= 63 and all(c.isalnum() or c == "-" for c in name) and name == name.lower()

    class Conflict(Exception):
        status = 409

    class Retried(FakeCustomObjects):
        def create_namespaced_custom_object(self, *a):
            raise Conflict("AlreadyExists")

    messages = []
    launch_trainjob(trainjob_body(name, args), api=Retried({"type": "Complete", "status": "True"}), poll_s=0,
                    log=messages.append)
    assert "attaching" in messages[0] and any("Complete=True" in m for m in messages)

    class Forbidden(Exception):
        status = 403

    class Denied(FakeCustomObjects):
        def create_namespaced_custom_object(self, *a):
            raise Forbidden("forbidden")

    with pytest.raises(Forbidden):
        launch_trainjob(trainjob_body(name, args), api=Denied({}), poll_s=0, log=messages.append)


def test_local_launcher_streams_the_childs_output():
    import io

    from cxrlt.ops.launch import launch_local

    out = io.StringIO()
    launch_local(["models", "--help"], out=out)
    assert "summary" in out.getvalue()  # the child's own output reached the step log
    with pytest.raises(RuntimeError, match="No such command"):
        launch_local(["no-such-command"], out=io.StringIO())


def test_local_launcher_sets_the_childs_threads(monkeypatch):
    """``threads`` reaches the child as OMP_NUM_THREADS (two members side by side, one thread each); 0 leaves the
    environment alone."""
    import io

    from cxrlt.ops import launch

    seen = []

    class FakePopen:
        def __init__(self, cmd, env=None, **_):
            seen.append(env)
            self.stdout, self.returncode = io.StringIO("ok\n"), 0

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

    monkeypatch.setattr(launch.subprocess, "Popen", FakePopen)
    launch.launch_local(["train"], threads=1, out=io.StringIO())
    launch.launch_local(["train"], out=io.StringIO())
    assert seen[0]["OMP_NUM_THREADS"] == "1" and seen[1] is None


def test_data_hash_covers_the_images(synth_data, tmp_path):
    import os
    import shutil

    from cxrlt.data.validate import data_manifest_hash

    data = tmp_path / "d"
    shutil.copytree(synth_data, data)
    before = data_manifest_hash(data)
    image = sorted((data / "images").iterdir())[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # the file was rewritten
    assert data_manifest_hash(data) != before


def test_compiled_pipeline_takes_cache_size_members_split_and_gate_from_the_profile(tmp_path):
    """The compiled pipeline wires preprocess's size, the split, the member loop and the gate to plan_run/plan_jobs,
    which read the profile at run time: with configs/paper.yaml that is a 512 px cache and the paper's members."""
    from components.plan_run.component import plan_jobs, plan_run
    from pipelines.compile import compile_all

    ir = next(yaml.safe_load_all(compile_all(tmp_path)[0].read_text()))
    tasks = ir["root"]["dag"]["tasks"]
    size = tasks["preprocess"]["inputs"]["parameters"]["size"]
    assert size["taskOutputParameter"] == {"producerTask": "plan-run", "outputParameterKey": "cache_size"}
    # the weights are checked first, against the run's copy of the profile, before any data step
    assert tasks["check-weights"]["inputs"]["parameters"]["config"]["taskOutputParameter"] == {
        "producerTask": "plan-run", "outputParameterKey": "profile"}
    assert "check-weights" in tasks["validate-data"]["dependentTasks"]
    for key, source in (("val_fraction", "val_fraction"), ("seed", "split_seed")):
        assert tasks["split-projection"]["inputs"]["parameters"][key]["taskOutputParameter"]["outputParameterKey"] \
            == source
    loop = next(t for t in tasks.values() if "parameterIterator" in t)
    assert "plan-jobs" in loop["parameterIterator"]["items"]["inputParameter"]
    defaults = {k: v.get("defaultValue") for k, v in ir["root"]["inputDefinitions"]["parameters"].items()}
    assert defaults["cache_size"] == 0 and defaults["jobs"] == [] and defaults["min_mauroc"] == -1.0

    paper = str(ROOT / "configs" / "paper.yaml")
    plan = plan_run.python_func(config=paper, shared_root=str(tmp_path / "shared"), run_id="run-1")
    assert plan.cache_size == 512 and plan.min_mauroc == 0.75 and plan.run_dir == str(tmp_path / "shared/runs/run-1")
    assert Path(plan.profile).read_text() == Path(paper).read_text()  # the run's copy on the shared volume
    jobs = plan_jobs.python_func(config=plan.profile, jobs=[])
    # one loop trains everything: the CLIP first (the longest job), the members, the router
    assert jobs == [{"view": "", "member": "zeroshot"},
                    *({"view": v, "member": m} for v in ("frontal", "lateral", "mixed") for m in ("pcam", "swin")),
                    {"view": "", "member": "router"}]
    named = plan_jobs.python_func(config=plan.profile, jobs=[{"view": "frontal", "member": "swin"},
                                                             {"view": "", "member": "router"}])
    assert named == [{"view": "", "member": "zeroshot"}, {"view": "frontal", "member": "swin"},
                     {"view": "", "member": "router"}]  # named jobs still get the CLIP and one router
    # the CLIP and the router are items of that loop: no training step runs outside it
    assert {t["componentRef"]["name"] for t in tasks.values()}.isdisjoint({"comp-train-member", "comp-train-zeroshot"})
    assert tasks["fit-ensemble"]["inputs"]["artifacts"]["trained"]["taskOutputArtifact"]["producerTask"] == \
        loop["taskInfo"]["name"]
    assert tasks["evaluate"]["inputs"]["artifacts"]["zeroshot"]["taskOutputArtifact"] == {
        "producerTask": "fit-ensemble", "outputArtifactKey": "zeroshot"}
    export = next(t for c in ir["components"].values() for t in c.get("dag", {}).get("tasks", {}).values()
                  if t["taskInfo"]["name"] == "export-onnx")
    assert export["inputs"]["artifacts"]["zeroshot"] == {
        "componentInputArtifact": "pipelinechannel--fit-ensemble-zeroshot"}
    assert plan_run.python_func(config=paper, shared_root=str(tmp_path / "s"), run_id="r", cache_size=640,
                                min_mauroc=0.8).cache_size == 640  # a parameter overrides
    with pytest.raises(ValueError, match="smaller than the profile's data.image_size 512"):
        plan_run.python_func(config=paper, shared_root=str(tmp_path / "s"), run_id="r2", cache_size=64)


def test_training_refuses_a_cache_of_another_size_or_scaling(synth_data, tmp_path):
    from cxrlt.data.images import PreprocessConfig
    from cxrlt.data.preprocess import build_cache
    from cxrlt.data.tables import IMAGES_DIR, read_id_list
    from cxrlt.training.data import CacheMismatchError, ImageStore

    ids = read_id_list(synth_data / "CXRLT_2026_training.csv")[:3]
    build_cache(ids, synth_data / IMAGES_DIR, tmp_path / "c16", PreprocessConfig(size=16), progress=False)
    contract = PreprocessConfig(size=32)
    with pytest.raises(CacheMismatchError, match="holds 16 px images; the profile's data.cache_size is 32 px"):
        ImageStore(synth_data / IMAGES_DIR, contract, tmp_path / "c16", cache_size=32)
    with pytest.raises(CacheMismatchError, match="network input is 32 px and would be upsampled"):
        ImageStore(synth_data / IMAGES_DIR, contract, tmp_path / "c16")
    build_cache(ids, synth_data / IMAGES_DIR, tmp_path / "c32", PreprocessConfig(size=32), progress=False)
    bits = PreprocessConfig(size=32, scaling="bit_depth")
    with pytest.raises(CacheMismatchError, match="percentile scaling .* the profile's contract is bit_depth"):
        ImageStore(synth_data / IMAGES_DIR, bits, tmp_path / "c32", cache_size=32)
    assert ImageStore(synth_data / IMAGES_DIR, bits, tmp_path / "c32").cache_dir is None  # CLIP: raw files instead
    assert ImageStore(synth_data / IMAGES_DIR, contract, tmp_path / "c32", cache_size=32).cache_dir is not None


def test_fit_ensemble_splits_the_loops_outputs_into_members_and_the_one_zero_shot_run(tmp_path):
    """The training loop publishes members, the router and the CLIP alike; the ensemble step takes the member runs
    and passes the CLIP's run on, and refuses a loop that published no zero-shot run, or two."""
    from cxrlt.dataplane import DataPlaneError, publish
    from cxrlt.ops.pipeline_steps import collect_trained

    arts = {}
    for name, kind in (("frontal-pcam", "member-runs"), ("router", "member-runs"), ("zeroshot", "zeroshot-run")):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "card.json").write_text(name)
        arts[name] = str(tmp_path / "art" / name)
        publish(arts[name], tmp_path / "runs" / name, kind)
    members, clip = collect_trained([arts["zeroshot"], arts["frontal-pcam"], arts["router"]])
    assert members == [tmp_path / "runs" / "frontal-pcam", tmp_path / "runs" / "router"]
    assert Path(clip.path) == tmp_path / "runs" / "zeroshot" and clip.kind == "zeroshot-run"
    with pytest.raises(DataPlaneError, match="published 0 zero-shot runs"):
        collect_trained([arts["frontal-pcam"], arts["router"]])
    with pytest.raises(DataPlaneError, match="published 2 zero-shot runs"):
        collect_trained([arts["zeroshot"], arts["zeroshot"], arts["router"]])
