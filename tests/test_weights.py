"""Pretrained weights: every source loads the exact tensors the test wrote, stems adapt like timm's, mirrors verify
sha256, missing weights fail with the documented message, CheXzero's checkpoint layout round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from cxrlt import weights as W
from cxrlt.cli import app
from cxrlt.models.members import PooledCNN, TimmClassifier

ROOT = Path(__file__).resolve().parents[1]
ARCH = "mobilenetv3_small_050"
TAG = f"{ARCH}.lamb_in1k"


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path, monkeypatch):
    """An empty weights cache, no mirror and an offline, empty Hugging Face cache for every test."""
    import huggingface_hub.constants as hf

    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "weights-cache"))
    monkeypatch.delenv(W.MIRROR_ENV, raising=False)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)


def _source_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = timm.create_model(ARCH, pretrained=False, num_classes=1000)
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _seed_hf_cache(tmp_path, state) -> None:
    """Lay out the Hugging Face hub cache exactly as a download of timm/<TAG> would."""
    folder = tmp_path / "hf-hub" / f"models--timm--{TAG}"
    commit = "a" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / commit / "model.safetensors"))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def _assert_loaded(net: torch.nn.Module, state: dict, skip: tuple[str, ...] = ()) -> None:
    got = net.state_dict()
    compared = 0
    for key, value in state.items():
        if key in got and not key.startswith(skip):
            assert torch.equal(got[key], value), key
            compared += 1
    assert compared > 0.9 * len(state) - len(skip) * 2


@pytest.mark.parametrize("in_chans", [3, 1])
def test_timm_tag_from_the_hub_cache_with_stem_adaptation(tmp_path, in_chans):
    state = _source_state()
    _seed_hf_cache(tmp_path, state)
    router = TimmClassifier(ARCH, 2, in_chans, pretrained=TAG)
    _assert_loaded(router.net, state, skip=("classifier", "conv_stem"))
    stem = router.net.conv_stem.weight
    expected = state["conv_stem.weight"] if in_chans == 3 else state["conv_stem.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(stem, expected, rtol=0, atol=1e-7)  # timm's own adaptation: RGB kernels summed
    assert router.net.classifier.weight.shape[0] == 2  # the 1000-class head is reset, not loaded
    assert router.weights.source.startswith("timm hub timm/") and router.weights.sha256 == \
        W.sha256_file(next((tmp_path / "hf-hub").rglob("model.safetensors")))


def test_local_file_wrapped_checkpoint_and_member_checkpoint(tmp_path):
    state = _source_state(1)
    wrapped = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    trunk = PooledCNN(ARCH, 30, "pcam", 1, pretrained=str(wrapped))
    _assert_loaded(trunk.trunk, state, skip=("classifier", "conv_stem"))
    # a trained cxrlt member's best.pt is itself a valid starting point (transfer): its trunk.* tensors load
    torch.save({"model": trunk.state_dict(), "epoch": 0, "score": 0.1}, tmp_path / "best.pt")
    again = PooledCNN(ARCH, 30, "pcam", 1, pretrained=str(tmp_path / "best.pt"))
    for key, value in trunk.trunk.state_dict().items():
        assert torch.equal(again.trunk.state_dict()[key], value), key


def test_missing_weights_fail_with_the_documented_message(tmp_path):
    with pytest.raises(W.WeightsNotFoundError) as err:
        TimmClassifier(ARCH, 2, 1, pretrained=TAG)
    text = str(err.value)
    assert TAG in text and "Hugging Face cache" in text and "no weights mirror" in text
    assert f"cxrlt weights mirror {TAG}" in text and W.MIRROR_ENV in text
    with pytest.raises(W.WeightsNotFoundError, match="not found"):
        TimmClassifier(ARCH, 2, 1, pretrained=str(tmp_path / "nope.safetensors"))
    with pytest.raises(W.WeightsMismatchError, match="is for resnet18"):
        TimmClassifier(ARCH, 2, 1, pretrained="resnet18.a1_in1k")
    with pytest.raises(W.WeightsNotFoundError, match="not one"):
        TimmClassifier(ARCH, 2, 1, pretrained=f"{ARCH}.no_such_tag")


def test_backbone_prefixed_fine_tune_loads_through_the_declared_key_map(tmp_path):
    """A fine-tune that keeps its trunk under ``backbone.`` (and its own heads beside it, as HPH's public Task 1
    checkpoint does): refused without a key map, naming the missing and unexpected keys; loaded exactly with
    ``checkpoint_keys: {strip_prefix: backbone.}``. A trunk has no classifier, so this is the load timm itself would
    accept non-strictly with every key missing."""
    state = _source_state(4)
    ckpt = {f"backbone.{k}": v for k, v in state.items()}
    ckpt |= {"bn.weight": torch.ones(4), "head.classifier.weight": torch.zeros(30, 4)}
    save_file(ckpt, str(tmp_path / "their_task1.safetensors"))
    with pytest.raises(W.WeightsMismatchError) as err:
        PooledCNN(ARCH, 30, "csra", 3, pretrained=str(tmp_path / "their_task1.safetensors"))
    text = str(err.value)
    assert "missing keys" in text and "unexpected keys ['backbone." in text and "strip_prefix" in text
    net = PooledCNN(ARCH, 30, "csra", 3, pretrained=str(tmp_path / "their_task1.safetensors"),
                    checkpoint_keys={"strip_prefix": "backbone."})
    _assert_loaded(net.trunk, state, skip=("classifier",))
    with pytest.raises(W.WeightsMismatchError, match="no key starts with it"):
        PooledCNN(ARCH, 30, "csra", 3, pretrained=str(tmp_path / "their_task1.safetensors"),
                  checkpoint_keys={"strip_prefix": "encoder."})
    # the declared map is a profile key, validated like the rest
    from cxrlt.config import ConfigError, load_config

    raw = yaml.safe_load((ROOT / "configs/hph.yaml").read_text())
    raw["models"]["mlp"]["checkpoint_keys"] = {"strip_prefix": "backbone.", "renames": {}}
    with pytest.raises(ConfigError, match="models.mlp.checkpoint_keys.renames: unknown key"):
        load_config(raw)


def test_a_checkpoint_that_fits_no_key_is_refused_not_loaded_partially(tmp_path):
    state = _source_state(5)
    state["conv_stem.weight"] = torch.zeros(3, 3, 3, 3)  # wrong shape
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(W.WeightsMismatchError, match="do not fit"):
        TimmClassifier(ARCH, 2, 3, pretrained=str(tmp_path / "bad.safetensors"))
    del state["conv_stem.weight"]
    save_file(state, str(tmp_path / "short.safetensors"))
    with pytest.raises(W.WeightsMismatchError, match=r"1 missing keys \['conv_stem.weight'\]"):
        TimmClassifier(ARCH, 2, 3, pretrained=str(tmp_path / "short.safetensors"))


def _seed_hf_repo(tmp_path, repo: str, files: dict[str, dict]) -> Path:
    folder = tmp_path / "hf-hub" / f"models--{repo.replace('/', '--')}"
    commit = "b" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    for name, state in files.items():
        save_file(state, str(folder / "snapshots" / commit / name))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return folder / "snapshots" / commit


def test_hf_hub_repositories_resolve_from_the_cache_for_timm_and_open_clip(tmp_path):
    """``hf-hub:ORG/NAME`` (and ``/FILE``) for both families, read offline from the Hugging Face cache."""
    from cxrlt.zeroshot.model import build_clip

    state = _source_state(6)
    snap = _seed_hf_repo(tmp_path, "someone/cxr-mobilenet", {"model.safetensors": state})
    net = TimmClassifier(ARCH, 2, 3, pretrained="hf-hub:someone/cxr-mobilenet")
    _assert_loaded(net.net, state, skip=("classifier",))
    assert net.weights.source == "Hugging Face hub someone/cxr-mobilenet"
    assert net.weights.sha256 == W.sha256_file(snap / "model.safetensors")
    _seed_hf_repo(tmp_path, "team/task1", {"odd_name.safetensors": {f"backbone.{k}": v for k, v in state.items()}})
    trunk = PooledCNN(ARCH, 30, "mlp", 3, pretrained="hf-hub:team/task1/odd_name.safetensors",
                      checkpoint_keys={"strip_prefix": "backbone."})
    _assert_loaded(trunk.trunk, state, skip=("classifier",))
    torch.manual_seed(0)
    tiny = {"model": "tiny", "image_size": 32, "embed_dim": 16, "vision": {"layers": [1, 1, 1, 1], "width": 16},
            "text": {"context_length": 16, "width": 32, "heads": 2, "layers": 1}}
    writer, _ = build_clip(tiny)
    _seed_hf_repo(tmp_path, "lab/cxr-clip", {"open_clip_model.safetensors": writer.state_dict()})
    loaded, resolved = build_clip({**tiny, "pretrained": "hf-hub:lab/cxr-clip"}, weights=True)
    assert resolved.source == "Hugging Face hub lab/cxr-clip"
    for key, value in writer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert W.locate("hf-hub:lab/cxr-clip", "open_clip") == "found: Hugging Face hub lab/cxr-clip (cached)"
    assert W.locate("hf-hub:lab/absent", "open_clip").startswith("not here: the Hugging Face cache")
    with pytest.raises(W.WeightsNotFoundError) as err:
        W.resolve("hf-hub:lab/absent", "open_clip", "ViT-L-14")
    assert "cxrlt weights mirror hf-hub:lab/absent --clip-arch ViT-L-14" in str(err.value)
    assert "--name lab--absent" in str(err.value)


def test_weights_check_and_summary_say_what_resolves_here(tmp_path):
    """`cxrlt weights check` loads every configured weight strictly and fails listing each missing one with its fix;
    `cxrlt models summary` says, without downloading, whether each is on this machine."""
    state = _source_state(7)
    save_file(state, str(tmp_path / "router.safetensors"))
    raw = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    raw["models"]["router"] = {"arch": ARCH, "pretrained": str(tmp_path / "router.safetensors")}
    raw["models"]["pcam"]["pretrained"] = "resnet18.a1_in1k"  # a timm tag that is not in this (empty) cache
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(raw))
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "check", "--config", str(tmp_path / "profile.yaml"), "--json"])
    assert result.exit_code == 1
    rows = {r["network"]: r for r in json.loads(result.stdout)}
    assert rows["router"]["status"] == "ok" and rows["router"]["sha256"] == W.sha256_file(
        tmp_path / "router.safetensors")
    assert rows["pcam"]["status"] == "failed" and "cxrlt weights mirror resnet18.a1_in1k" in rows["pcam"]["detail"]
    assert rows["swin"]["status"] == "random" and rows["zeroshot"]["status"] == "random"
    assert "weights missing or not fitting for pcam" in result.stderr
    summary = json.loads(runner.invoke(app, ["models", "summary", "--config", str(tmp_path / "profile.yaml"),
                                             "--json"]).output)
    here = {r["network"]: r["here"] for r in summary}
    assert here["router"].startswith("found: file") and here["pcam"].startswith("not here: the Hugging Face cache")
    assert here["swin"] == "random init"
    raw["models"]["pcam"]["pretrained"] = None
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(raw))
    assert runner.invoke(app, ["weights", "check", "--config", str(tmp_path / "profile.yaml")]).exit_code == 0


@pytest.mark.slow
def test_s3_mirror_round_trip_with_sha256(s3, tmp_path, monkeypatch):
    state = _source_state(2)
    _seed_hf_cache(tmp_path, state)
    mirror = "s3://cxrlt-data/weights"
    runner = CliRunner()
    result = runner.invoke(app, ["weights", "mirror", TAG, "--to", mirror])
    assert result.exit_code == 0, result.output
    file = tmp_path / "chexzero.pt"
    torch.save({"x": torch.arange(4.0)}, file)
    assert runner.invoke(app, ["weights", "mirror", str(file), "--name", "chexzero", "--to", mirror]).exit_code == 0
    _seed_hf_repo(tmp_path, "someone/cxr-mobilenet", {"model.safetensors": state})
    result = runner.invoke(app, ["weights", "mirror", "hf-hub:someone/cxr-mobilenet", "--to", mirror])
    assert result.exit_code == 0, result.output
    listed = json.loads(runner.invoke(app, ["weights", "list", "--from", mirror, "--json"]).output)
    assert [c["name"] for c in listed] == ["chexzero", TAG, "someone--cxr-mobilenet"]
    assert listed[1]["sha256"] == W.sha256_file(next((tmp_path / "hf-hub").rglob("model.safetensors")))

    # the hub is gone (as on an air-gapped cluster): the tag resolves through the mirror only
    import shutil

    shutil.rmtree(tmp_path / "hf-hub")
    monkeypatch.setenv(W.MIRROR_ENV, mirror)
    net = TimmClassifier(ARCH, 2, 3, pretrained=TAG)
    _assert_loaded(net.net, state, skip=("classifier",))
    assert net.weights.source.startswith(f"mirror {mirror}/{TAG}")
    hub = TimmClassifier(ARCH, 2, 3, pretrained="hf-hub:someone/cxr-mobilenet")  # a hub repository, mirrored
    _assert_loaded(hub.net, state, skip=("classifier",))
    assert hub.weights.source.startswith(f"mirror {mirror}/someone--cxr-mobilenet")

    # a changed object in the mirror is refused by its sha256
    s3.put_object(Bucket="cxrlt-data", Key=f"weights/{TAG}/model.safetensors", Body=b"tampered")
    shutil.rmtree(tmp_path / "weights-cache")
    with pytest.raises(W.WeightsIntegrityError, match="does not match"):
        TimmClassifier(ARCH, 2, 3, pretrained=TAG)

    # a plain s3:// URI is a weight source too
    s3.upload_file(str(file), "cxrlt-data", "plain/chexzero.pt")
    resolved = W.resolve("s3://cxrlt-data/plain/chexzero.pt")
    assert resolved.sha256 == W.sha256_file(file)


@pytest.mark.slow
def test_mlflow_artifact_uri(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    state = _source_state(3)
    save_file(state, str(tmp_path / "model.safetensors"))
    from cxrlt.tracking import experiment_id

    with mlflow.start_run(experiment_id=experiment_id("weights-test")) as run:
        mlflow.log_artifact(str(tmp_path / "model.safetensors"), artifact_path="weights")
    for uri in (f"runs:/{run.info.run_id}/weights/model.safetensors", f"runs:/{run.info.run_id}/weights"):
        net = TimmClassifier(ARCH, 2, 3, pretrained=uri)
        _assert_loaded(net.net, state, skip=("classifier",))
        assert net.weights.source == f"mlflow {uri}"
    with pytest.raises(W.WeightsNotFoundError, match="could not be downloaded"):
        W.resolve(f"runs:/{run.info.run_id}/nothing-here.pt")


@pytest.mark.slow
def test_chexzero_checkpoint_layout_round_trip(tmp_path):
    """A state dict in OpenAI CLIP ViT-B/32 layout (TorchScript meta keys, DDP prefix, wrapped) loads exactly."""
    import open_clip

    from cxrlt.zeroshot.model import build_clip, tokenize

    torch.manual_seed(0)
    writer = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    state = {f"module.{k}": v for k, v in writer.state_dict().items()}
    state.update({"module.input_resolution": torch.tensor(224), "module.context_length": torch.tensor(77),
                  "module.vocab_size": torch.tensor(49408)})
    torch.save({"state_dict": state, "epoch": 5}, tmp_path / "best_64_5e-05_original_22000_0.864.pt")
    loaded, resolved = build_clip({"model": "ViT-B-32-quickgelu", "pretrained": str(tmp_path / "best_64_5e-05_"
                                   "original_22000_0.864.pt")}, weights=True)
    loaded.eval()
    assert resolved is not None and loaded.context_length == 77
    image = torch.randn(2, 3, 224, 224)
    text = tokenize(["a chest x-ray showing goiter", "no goiter"], 77)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(image), writer.encode_image(image), rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded.encode_text(text), writer.encode_text(text), rtol=0, atol=1e-6)
    # a checkpoint of another shape is refused, never loaded partially
    torch.save({"visual.proj": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(W.WeightsMismatchError, match="not a checkpoint of ViT-B-32-quickgelu"):
        build_clip({"model": "ViT-B-32-quickgelu", "pretrained": str(tmp_path / "other.pt")}, weights=True)


@pytest.mark.slow
def test_chexzero_weights_pin_quickgelu(tmp_path):
    """CheXzero is OpenAI CLIP, whose MLPs use QuickGELU x * sigmoid(1.702 x). A block's MLP computed by hand from the
    checkpoint's own tensors matches the configured ViT-B-32-quickgelu, and the same check fails for ViT-B-32 (GELU):
    a profile naming the wrong activation cannot pass."""
    import open_clip

    from cxrlt.zeroshot.model import build_clip

    torch.manual_seed(1)
    state = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).state_dict()
    torch.save(state, tmp_path / "chexzero.pt")
    x = torch.randn(4, 768)
    mlp = "visual.transformer.resblocks.0.mlp"
    fc_w, fc_b = state[f"{mlp}.c_fc.weight"], state[f"{mlp}.c_fc.bias"]
    pr_w, pr_b = state[f"{mlp}.c_proj.weight"], state[f"{mlp}.c_proj.bias"]
    h = x @ fc_w.T + fc_b
    expected = (h * torch.sigmoid(1.702 * h)) @ pr_w.T + pr_b

    def block_mlp(arch: str) -> torch.Tensor:
        model, _ = build_clip({"model": arch, "pretrained": str(tmp_path / "chexzero.pt")}, weights=True)
        with torch.no_grad():
            return model.visual.transformer.resblocks[0].mlp(x)

    torch.testing.assert_close(block_mlp("ViT-B-32-quickgelu"), expected, rtol=1e-5, atol=1e-5)
    gelu = block_mlp("ViT-B-32")  # same shapes, so the weights load: only the activation differs
    assert (gelu - expected).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------------------- config
def test_profiles_validate_and_name_bad_keys(tmp_path):
    from cxrlt.config import ConfigError, config_hash, load_config

    tiny = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    tiny["train"]["learning_rate"] = 0.1
    tiny["models"]["swin"]["pretrained"] = 3
    tiny["zeroshot"]["alpha"] = -1
    tiny["train"]["overrides"]["router"]["lr"] = -1  # per-network overrides are validated like train itself
    del tiny["models"]["pcam"]["pretrained"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text and "train.learning_rate: unknown key" in text
    assert "models.swin.pretrained" in text and "zeroshot.alpha" in text and "train.overrides.router.lr" in text
    assert "models.pcam.pretrained: Field required (write `pretrained: null`" in text
    # the hash covers the validated profile: a default written out hashes like the default left out
    cfg = yaml.safe_load((ROOT / "configs/tiny.yaml").read_text())
    explicit = {**cfg, "ensemble": {"grid_step": 0.05}}
    implicit = {k: v for k, v in cfg.items() if k != "ensemble"}
    assert config_hash(explicit) == config_hash(implicit)


@pytest.mark.parametrize("profile", ["configs/tiny.yaml", "configs/paper.yaml"])
def test_models_summary_counts_match_the_libraries(profile):
    import open_clip

    result = CliRunner().invoke(app, ["models", "summary", "--config", str(ROOT / profile), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["network"]: r for r in json.loads(result.output)}
    cfg = yaml.safe_load((ROOT / profile).read_text())
    chans = cfg["data"]["input"]["channels"]
    with torch.device("meta"):
        router = timm.create_model(cfg["models"]["router"]["arch"], num_classes=2, in_chans=chans)
        trunk = timm.create_model(cfg["models"]["pcam"]["backbone"], num_classes=0, in_chans=chans,
                                  **cfg["models"]["pcam"].get("backbone_kwargs", {}))
        if cfg["zeroshot"]["model"] != "tiny":
            clip = open_clip.create_model(cfg["zeroshot"]["model"], device="meta")
            assert rows["zeroshot"]["params"] == sum(p.numel() for p in clip.parameters())
    assert rows["router"]["params"] == sum(p.numel() for p in router.parameters())
    assert rows["pcam"]["backbone_params"] == sum(p.numel() for p in trunk.parameters())
    assert rows["cait"]["trainable_params"] < rows["cait"]["params"]  # the pcam trunk inside is frozen
    if profile.endswith("paper.yaml"):  # the figures the README prints
        assert 27e6 < rows["pcam"]["backbone_params"] < 29e6 and 27e6 < rows["swin"]["params"] < 29e6
        assert 4e6 < rows["router"]["params"] < 5.5e6 and 150e6 < rows["zeroshot"]["params"] < 152e6
        assert rows["pcam"]["channels"] == 3 and rows["pcam"]["mean"] == [0.485, 0.456, 0.406]
        assert rows["zeroshot"]["mean"] == [round(101.48761 / 255, 5)] * 3 and rows["zeroshot"]["input_size"] == 224
        assert rows["router"]["weight_source"].startswith("tag efficientnet_b0.ra_in1k")
        assert rows["cait"]["weight_source"].startswith("random init")


def test_contract_normalisation_is_derived_from_the_profile():
    from cxrlt.config import load_config, task1_preprocess, zeroshot_settings
    from cxrlt.data.images import PreprocessConfig

    paper = load_config(ROOT / "configs/paper.yaml")
    contract = task1_preprocess(paper)
    img = np.full((4, 4), 0.5, np.float32)
    x = contract.normalize(img)
    assert x.shape == (3, 4, 4)
    np.testing.assert_allclose(x[:, 0, 0], [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225],
                               rtol=1e-6)
    zs = PreprocessConfig.from_dict(zeroshot_settings(paper)["preprocess"])
    np.testing.assert_allclose(zs.normalize(img)[:, 0, 0], (127.5 - 101.48761) / 83.43944, rtol=1e-5)
    assert PreprocessConfig.from_dict(contract.to_dict()) == contract


@pytest.mark.slow
def test_training_starts_from_the_configured_weights(synth_data, tmp_path):
    """A member trained with ``pretrained`` records the exact file it started from (sha256) in its card."""
    from cxrlt.training.trainer import TrainRequest, train_member
    from tests.conftest import TINY_CONFIG

    torch.manual_seed(4)
    source = timm.create_model("convnextv2_atto", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "atto.safetensors"))
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["models"]["pcam"]["pretrained"] = str(tmp_path / "atto.safetensors")
    card = train_member(TrainRequest("mixed/pcam", cfg, synth_data, tmp_path / "run", epochs=1, progress=False))
    assert card["pretrained"]["sha256"] == W.sha256_file(tmp_path / "atto.safetensors")
    assert card["pretrained"]["source"].startswith("file ") and card["preprocess"]["channels"] == 1
    stored = json.loads((tmp_path / "run" / "member.json").read_text())
    assert stored["pretrained"] == card["pretrained"]
