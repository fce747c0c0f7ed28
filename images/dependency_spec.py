"""Print pyproject.toml reduced to what installing the dependencies reads: the build system, the project's name,
version, Python range, dependencies and extras, and the package layout; or, with ``--gateway``, the requirements of
the DICOM gateway image alone (no torch: the gateway only reads tags, writes SRs and calls Triton).

The images install their dependencies from this reduced file in a layer of their own, so a change to the linters',
the tests' or the import contracts' settings in pyproject.toml leaves that layer (torch and the rest) cached:

    python3 images/dependency_spec.py pyproject.toml > /spec/pyproject.toml
    python3 images/dependency_spec.py --gateway pyproject.toml > /spec/gateway.txt

Standard library only (it runs in the bare base image). JSON string arrays are valid TOML arrays.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib

PROJECT_KEYS = ("name", "version", "requires-python", "dependencies")
#: Extras no image installs (tests and linters): left out, so a new test tool does not reinstall the images' torch.
IMAGE_FREE_EXTRAS = ("dev",)
#: What ``cxrlt gateway`` imports, by distribution: these of the project's dependencies, the ``gateway`` extra, and
#: these of the other extras (pydicom reads tags; tritonclient calls Triton).
GATEWAY_DEPENDENCIES = ("pydantic", "numpy", "opencv-python-headless", "typer", "pyyaml")
GATEWAY_FROM_EXTRAS = {"dicom": ("pydicom",), "serve": ("tritonclient",)}


def _distribution(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def gateway_requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    picked = [r for r in project["dependencies"] if _distribution(r) in GATEWAY_DEPENDENCIES]
    for extra, names in GATEWAY_FROM_EXTRAS.items():
        picked += [r for r in extras[extra] if _distribution(r) in names]
    missing = set(GATEWAY_DEPENDENCIES) | {n for names in GATEWAY_FROM_EXTRAS.values() for n in names}
    missing -= {_distribution(r) for r in picked}
    if missing:
        raise SystemExit(f"pyproject.toml no longer lists {sorted(missing)}: update GATEWAY_DEPENDENCIES")
    return picked + list(extras["gateway"])


def _table(name: str, values: dict) -> list[str]:
    """``[name]`` with its strings and string arrays; nested tables follow as ``[name.key]``."""
    plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
    lines = [f"[{name}]", *(f"{json.dumps(key)} = {json.dumps(value)}" for key, value in plain.items()), ""]
    for key, value in values.items():
        if isinstance(value, dict):
            lines += _table(f"{name}.{key}", value)
    return lines


def dependency_spec(pyproject: dict) -> str:
    project = pyproject["project"]
    lines = _table("build-system", pyproject["build-system"])
    kept = {k: project[k] for k in PROJECT_KEYS if k in project}
    extras = {k: v for k, v in project.get("optional-dependencies", {}).items() if k not in IMAGE_FREE_EXTRAS}
    lines += _table("project", kept | {"optional-dependencies": extras})
    lines += _table("tool.setuptools", pyproject.get("tool", {}).get("setuptools", {}))
    return "\n".join(lines)


if __name__ == "__main__":
    gateway = sys.argv[1] == "--gateway"
    with open(sys.argv[-1], "rb") as f:
        pyproject = tomllib.load(f)
    sys.stdout.write("\n".join(gateway_requirements(pyproject)) + "\n" if gateway else dependency_spec(pyproject))
