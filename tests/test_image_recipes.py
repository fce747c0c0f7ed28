"""The image recipes without building them: what their cached dependency layers are keyed on."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _spec(pyproject_text: str, tmp_path: Path) -> str:
    (tmp_path / "pyproject.toml").write_text(pyproject_text)
    script = ROOT / "images" / "dependency_spec.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "pyproject.toml")],
                         capture_output=True, text=True, check=True).stdout
    return out


def test_dependency_spec_keeps_what_installing_reads_and_ignores_tool_settings(tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    full, spec = tomllib.loads(text), tomllib.loads(_spec(text, tmp_path))
    for key in ("name", "version", "requires-python", "dependencies"):
        assert spec["project"][key] == full["project"][key]
    extras = full["project"]["optional-dependencies"]
    assert spec["project"]["optional-dependencies"] == {k: v for k, v in extras.items() if k != "dev"}
    assert spec["build-system"] == full["build-system"]
    assert spec["tool"] == {"setuptools": full["tool"]["setuptools"]}
    # a change to the linters' settings leaves the spec, and so the image's dependency layer, byte for byte alike
    edited = text.replace("line-length = 120", "line-length = 119")
    assert edited != text and _spec(edited, tmp_path) == _spec(text, tmp_path)
    # so does a new test tool (the dev extra, which no image installs)
    assert _spec(text.replace('"pytest>=8",', '"pytest>=8", "pytest-xdist",'), tmp_path) == _spec(text, tmp_path)
    # a new dependency changes it
    assert _spec(text.replace('"fairlearn>=0.12"', '"fairlearn>=0.13"'), tmp_path) != _spec(text, tmp_path)


def test_the_images_install_dependencies_from_the_spec_not_from_pyproject():
    recipe = (ROOT / "images" / "cxrlt.Dockerfile").read_text()
    dependency_stage = recipe.split("FROM python AS dependencies", 1)[1].split("FROM ", 1)[0]
    assert "COPY --from=dependency-spec /spec/dependencies.toml /src/pyproject.toml" in dependency_stage
    assert "COPY pyproject.toml" not in dependency_stage and "COPY README.md pyproject.toml" not in dependency_stage
    serve = (ROOT / "images" / "serve-cpu.Dockerfile").read_text().split("FROM python AS builder", 1)[1]
    assert "pyproject.toml" not in serve.split("FROM ", 1)[0]
