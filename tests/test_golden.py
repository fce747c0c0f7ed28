"""Golden outputs: raw PNG and DICOM files through the three paths that serve a bundle, against stored numbers.

The in-process predictor (PyTorch), the MLflow pyfunc (ONNX, loaded by MLflow) and Triton (the model repository over
gRPC) share preprocessing (``cxrlt.data.images``) and scoring (``cxrlt.scoring``); comparing them with each other
cannot see a change to that shared code. Here all three must reproduce ``tests/golden/served/expected.json`` within
1e-5. The bundle is rebuilt deterministically from seeded, untrained tiny networks (no training numerics), with fixed
ensemble weights, calibration, normal gating, flip TTA and a zero-shot head. Regenerate the numbers only on purpose,
after a deliberate change to the served output:

    .venv/bin/python -m tests.test_golden --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

GOLDEN = Path(__file__).parent / "golden" / "served"
EXPECTED = GOLDEN / "expected.json"
INPUTS = ("chest_16bit.png", "chest_8bit.png", "chest_monochrome1.dcm", "chest_rescaled.dcm")
TOLERANCE = 1e-5


def _config() -> dict:
    from cxrlt.config import load_config
    from tests.conftest import TINY_CONFIG

    return load_config({**TINY_CONFIG, "inference": {"tta": "flip", "normal_gate_alpha": 0.5}})


def _member(out: Path, member: str, cfg: dict, seed: int) -> None:
    """A member directory as training writes it, with seeded untrained weights."""
    from cxrlt.config import task1_preprocess
    from cxrlt.contract import MemberCard
    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.models.factory import ROUTER_CLASSES, build_member, build_router

    view, _, kind = member.rpartition("/")
    router = member == "router"
    contract = task1_preprocess(cfg)
    torch.manual_seed(seed)
    model = build_router(cfg["models"]["router"], contract.channels) if router else \
        build_member(kind, cfg["models"], len(KNOWN_CLASSES), contract.size, contract.channels)
    out.mkdir(parents=True)
    torch.save({"model": model.state_dict()}, out / "best.pt")
    MemberCard(member=member, kind="router" if router else kind, view=view or None,
               classes=list(ROUTER_CLASSES if router else KNOWN_CLASSES), image_size=contract.size,
               in_chans=contract.channels, preprocess=contract.to_dict(),
               tta="none" if router else cfg["inference"]["tta"], tta_merge=cfg["inference"]["tta_merge"],
               model_config=cfg["models"]["router" if router else kind]).save(out)


def _split_router(member_dir: Path, contract) -> None:
    """An untrained router sends every image the same way: scale its classifier and set its bias so that the golden
    files split between frontal and lateral at the widest gap between them, far from the decision boundary."""
    from cxrlt.data.images import load_preprocessed
    from cxrlt.models.factory import load_member

    state = torch.load(member_dir / "best.pt", weights_only=True)
    model, _ = load_member(member_dir)
    head = model.net.get_classifier()
    x = torch.from_numpy(contract.normalize(np.stack([load_preprocessed(f, contract) for f in _files()])))
    with torch.no_grad():
        head.weight.mul_(1000.0)
        head.bias.zero_()
        d = model(x)[:, 0] - model(x)[:, 1]
        ordered = torch.sort(d).values
        gap = int(torch.argmax(ordered[1:] - ordered[:-1]))  # split at the widest gap: the largest margin
        middle = (ordered[gap] + ordered[gap + 1]) / 2
        head.bias.copy_(torch.stack([-middle / 2, middle / 2]))
    state["model"] = model.state_dict()
    torch.save(state, member_dir / "best.pt")


def build_golden(root: Path) -> dict[str, Path]:
    """The golden ensemble, zero-shot model and exported bundle under ``root``."""
    from cxrlt.config import task1_preprocess, zeroshot_settings
    from cxrlt.contract import EnsembleSpec
    from cxrlt.export import export_bundle
    from cxrlt.labels import KNOWN_CLASSES
    from cxrlt.zeroshot.model import DualBranchCLIP, build_clip

    cfg = _config()
    ens = root / "ensemble"
    for seed, member in enumerate(("router", "frontal/pcam", "frontal/swin", "mixed/pcam")):
        _member(ens / member, member, cfg, seed)
    contract = task1_preprocess(cfg)
    _split_router(ens / "router", contract)
    n = len(KNOWN_CLASSES)
    spec = {"classes": list(KNOWN_CLASSES), "image_size": contract.size, "preprocess": contract.to_dict(),
            "tta": "flip", "tta_merge": "logit", "normal_gate_alpha": 0.5, "combine": "logit", "router": "router",
            "views": {"frontal": {"members": {"pcam": "frontal/pcam", "swin": "frontal/swin"},
                                  "weights": {"pcam": 0.6, "swin": 0.4}},
                      "mixed": {"members": {"pcam": "mixed/pcam"}, "weights": {"pcam": 1.0}}},
            "calibration": {"method": "platt",  # a different slope and bias per class, keyed by name
                            "a": {c: 0.5 + j / n for j, c in enumerate(KNOWN_CLASSES)},
                            "b": {c: -0.3 + 0.6 * j / n for j, c in enumerate(KNOWN_CLASSES)}},
            "bands": {}}
    EnsembleSpec.model_validate(spec).save(ens)
    zs_dir = root / "zeroshot"
    zs_dir.mkdir()
    settings = zeroshot_settings(cfg)
    torch.manual_seed(10)
    clip = DualBranchCLIP(build_clip(settings)[0], settings["context_length"])
    torch.save({"model": clip.state_dict()}, zs_dir / "best.pt")
    (zs_dir / "zeroshot.json").write_text(json.dumps({"kind": "zeroshot", "settings": settings}, default=str))
    export_bundle(ens, zs_dir, root / "bundle")
    return {"ensemble": ens, "zeroshot": zs_dir, "bundle": root / "bundle"}


def _files() -> list[Path]:
    return [GOLDEN / name for name in INPUTS]


def _frame(known: np.ndarray, unseen: np.ndarray, views) -> pd.DataFrame:
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES

    frame = pd.DataFrame(np.hstack([known, unseen]), columns=[*KNOWN_CLASSES, *UNSEEN_CLASSES])
    frame.insert(0, "view", list(views))
    return frame


def predictor_outputs(paths: dict[str, Path]) -> pd.DataFrame:
    from cxrlt.data.images import load_preprocessed
    from cxrlt.inference import EnsemblePredictor
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
    from cxrlt.zeroshot.predict import ZeroShotPredictor

    known = EnsemblePredictor(paths["ensemble"]).predict_files(_files())
    zs = ZeroShotPredictor(paths["zeroshot"])
    images = np.stack([load_preprocessed(f, zs.preprocess) for f in _files()])
    unseen = zs.predict(images, list(UNSEEN_CLASSES))
    return _frame(known[list(KNOWN_CLASSES)].to_numpy(), unseen, known["view"])


def _expected() -> pd.DataFrame:
    stored = json.loads(EXPECTED.read_text())
    return pd.DataFrame(stored["rows"], index=stored["files"])


def _check(got: pd.DataFrame, path: str) -> None:
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES

    expected = _expected()
    classes = [*KNOWN_CLASSES, *UNSEEN_CLASSES]
    assert list(got["view"]) == list(expected["view"]), path
    np.testing.assert_allclose(got[classes].to_numpy(float), expected[classes].to_numpy(float), rtol=0,
                               atol=TOLERANCE, err_msg=f"{path} differs from the golden outputs")


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> dict[str, Path]:
    return build_golden(tmp_path_factory.mktemp("golden"))


def test_golden_inputs_cover_the_formats_and_views():
    expected = _expected()
    assert list(expected.index) == list(INPUTS)
    assert {"frontal", "lateral"} <= set(expected["view"])  # lateral has no ensemble: served by the mixed one
    assert [f.read_bytes()[128:132] == b"DICM" for f in _files()] == [False, False, True, True]


def test_in_process_predictor_reproduces_the_golden_outputs(golden):
    _check(predictor_outputs(golden), "in-process predictor")


def test_pyfunc_reproduces_the_golden_outputs_without_cxrlt(golden, tmp_path):
    """The logged model runs in a Python that cannot import cxrlt (site-packages without its editable install)."""
    import site
    import subprocess

    from cxrlt.registry import save_bundle_model

    model = save_bundle_model(golden["bundle"], tmp_path / "pyfunc")
    script = (
        "import sys; sys.path.append(sys.argv[1])\n"
        "try:\n    import cxrlt\n    raise SystemExit('cxrlt is importable here')\nexcept ImportError:\n    pass\n"
        "import mlflow.pyfunc, pandas as pd\n"
        "model = mlflow.pyfunc.load_model(sys.argv[2])\n"
        "frame = pd.DataFrame({'image': [open(p, 'rb').read() for p in sys.argv[3:]]})\n"
        "print(model.predict(frame).to_json(orient='records'))\n")
    done = subprocess.run([sys.executable, "-S", "-c", script, site.getsitepackages()[0], str(model),
                           *map(str, _files())], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = pd.DataFrame(json.loads(done.stdout.strip().splitlines()[-1]))
    _check(got, "MLflow pyfunc")


def test_triton_reproduces_the_golden_outputs(golden, tmp_path):
    from cxrlt.labels import KNOWN_CLASSES, UNSEEN_CLASSES
    from serving.client import CXRClient
    from serving.repository import build_repository
    from serving.server import start, stop

    build_repository(golden["bundle"], tmp_path / "repo")
    handle = start(tmp_path / "repo", name=f"pytest-golden-{tmp_path.name}", http_port=0, grpc_port=0,
                   metrics_port=0, state_dir=tmp_path / "state")
    try:
        results = CXRClient(handle.grpc_url, batch_size=4).infer_files(_files())
    finally:
        stop(handle.name, state_dir=tmp_path / "state")
    assert [r.error for r in results] == [""] * len(INPUTS)
    got = _frame(np.array([[r.known[c] for c in KNOWN_CLASSES] for r in results]),
                 np.array([[r.unseen[c] for c in UNSEEN_CLASSES] for r in results]), [r.view for r in results])
    _check(got, "Triton")


def _write_inputs() -> None:
    """The raw files (once): synthetic radiographs as a 16-bit PNG, an 8-bit PNG and two DICOMs (MONOCHROME1;
    a rescale slope and intercept), of different sizes and aspect ratios."""
    import tempfile

    import cv2

    from cxrlt.data.dicom import array_to_dicom
    from cxrlt.data.synth import SynthConfig, generate

    GOLDEN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, SynthConfig(n_images=12, size=96, seed=5), progress=False)
        labels = pd.read_csv(Path(tmp) / "padchest_metadata.csv", dtype=str)
        raw = [cv2.imread(str(Path(tmp) / "images" / i), cv2.IMREAD_UNCHANGED) for i in labels["ImageID"]]
    lateral = [img for img, p in zip(raw, labels["Projection"], strict=True) if p == "L"][0]
    frontal = [img for img, p in zip(raw, labels["Projection"], strict=True) if p != "L"]
    cv2.imwrite(str(GOLDEN / INPUTS[0]), frontal[0][:, 8:])
    cv2.imwrite(str(GOLDEN / INPUTS[1]), (lateral // 257).astype(np.uint8))
    array_to_dicom(frontal[1][4:], GOLDEN / INPUTS[2], monochrome1=True)
    array_to_dicom((frontal[2] // 2).astype(np.uint16), GOLDEN / INPUTS[3], rescale_slope=2.0,
                   rescale_intercept=-1024.0)


def _write_expected() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        got = predictor_outputs(build_golden(Path(tmp)))
    got.index = list(INPUTS)
    EXPECTED.write_text(json.dumps({
        "made_with": f"torch {torch.__version__}, python -m tests.test_golden --write",
        "files": list(INPUTS), "rows": got.to_dict(orient="records")}, indent=1) + "\n")
    print(got[["view", "Normal", "cardiomegaly"]])


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit(__doc__)
    if "--inputs" in sys.argv or not all(f.exists() for f in _files()):
        _write_inputs()
    _write_expected()
