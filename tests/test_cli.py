import pytest
from typer.testing import CliRunner

from cxrlt.cli import app


@pytest.mark.parametrize("args", [[], ["data"], ["data", "synth"], ["data", "validate"], ["data", "preprocess"],
                                  ["data", "split"], ["eval"], ["demo"], ["registry", "status"],
                                  ["registry", "history"], ["serve", "build"]])
def test_help_explains_each_command(args):
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200
    if "Commands" not in result.output:  # a command (not a group): its options show defaults or are required
        assert "[default:" in result.output or "required" in result.output


def test_synth_cli_refuses_silly_sizes(tmp_path):
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path), "--n-images", "3"])
    assert result.exit_code == 1 and "n-images" in result.output


@pytest.mark.parametrize(("raw", "expected"), [
    ("15:08:44.944 - INFO - Executing task \x1b[96m'validate-data'\x1b[0m\n", "Executing task 'validate-data'"),
    ("frontal/pcam epoch 1/4:  4%|| 1/27\rINFO cxrlt.training.trainer: frontal/pcam epoch 1/4 loss 1.48 val_mAP 0.14\n",
     "INFO cxrlt.training.trainer: frontal/pcam epoch 1/4 loss 1.48 val_mAP 0.14"),
    ("    [KFP Executor 2026-11-26 15:08:48,208 INFO]: Looking for component `validate_data`\n", None),
    # a step that trains in its own process logs through the KFP executor's handler
    ("    [KFP Executor 2026-12-03 13:11:41,382 INFO]: frontal/pcam epoch 6/6 loss 0.5194 val_mAP 0.5776 (best)\n",
     "frontal/pcam epoch 6/6 loss 0.5194 val_mAP 0.5776 (best)"),
    ('                    "outputFile": "/tmp/x/gate/Output"\n', None),
    ("synth images: 100%|##########| 2000/2000\n", None),
    ("Traceback (most recent call last):\n", "Traceback (most recent call last):"),
    ("train-member: training frontal/pcam, frontal/cait (local)\n",
     "train-member: training frontal/pcam, frontal/cait (local)"),
    ("            train-member: reused frontal/swin from member-cache/897e41320ee9 (same rows, profile)\n",
     "train-member: reused frontal/swin from member-cache/897e41320ee9 (same rows, profile)"),
    ("INFO cxrlt.training.loop: zeroshot epoch 1/8 loss 2.1000, contrastive 1.9000, asl 0.1333 val known-class mAP "
     "0.1621 (best)\n", "INFO cxrlt.training.loop: zeroshot epoch 1/8 loss 2.1000, contrastive 1.9000, asl 0.1333 "
     "val known-class mAP 0.1621 (best)"),
])
def test_demo_quiet_mode_keeps_banners_progress_results_and_errors(raw, expected):
    from cxrlt.demo import shown

    assert shown(raw) == expected


def test_every_error_cxrlt_defines_derives_from_the_one_base():
    import importlib
    import inspect
    import pkgutil

    import cxrlt
    from cxrlt.errors import CxrltError

    defined = []
    for info in pkgutil.walk_packages(cxrlt.__path__, "cxrlt."):
        if info.name == "cxrlt.pyfunc_bundle" or info.name.endswith("__main__"):  # a model-from-code file (imported
            continue                                                            # inside MLflow models) and the CLI
        module = importlib.import_module(info.name)
        defined += [obj for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, Exception)
                    and obj.__module__ == module.__name__]
    assert len(defined) >= 15
    assert [e.__qualname__ for e in defined if not issubclass(e, CxrltError)] == []


def test_cli_prints_a_cxrlt_error_without_a_traceback(tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["predict", "--ensemble", str(tmp_path / "missing"), "--out",
                                      str(tmp_path / "p.csv"), str(png)])
    assert result.exit_code == 1
    assert "error: " in result.output and "is not an ensemble directory" in result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)


def test_choices_are_enums_that_refuse_other_values():
    help_text = CliRunner().invoke(app, ["serve", "build", "--help"], terminal_width=200).output
    assert "python" in help_text and "native" in help_text and "fp16" in help_text
    bad = CliRunner().invoke(app, ["serve", "build", "--bundle", "b", "--out", "o", "--onnx-runtime", "tensorrt"])
    assert bad.exit_code == 2 and "tensorrt" in bad.output
