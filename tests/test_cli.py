import pytest
from typer.testing import CliRunner

from cxrlt.cli import app


@pytest.mark.parametrize("args", [[], ["data"], ["data", "synth"], ["data", "validate"], ["data", "preprocess"],
                                  ["data", "split"], ["eval"]])
def test_help_explains_each_command(args):
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output and len(result.output) > 200


def test_synth_cli_refuses_silly_sizes(tmp_path):
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path), "--n-images", "3"])
    assert result.exit_code == 1 and "n-images" in result.output
