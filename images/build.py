"""Build the CPU images (cxrlt: tagged train and tools; serve-cpu) with podman, or Docker where its daemon is
usable; print their sizes.

    python images/build.py [--base-image IMAGE] [--only cxrlt serve-cpu] [--engine podman|docker]

Image names and tags come from ``cxrlt.platform.IMAGES`` (what the KFP components and infra/ reference), so
kfp.local's DockerRunner finds them. The base image defaults to ``python:3.11-slim``; where registries cannot be
reached, ``make images`` builds a Debian bookworm base with debootstrap and passes ``--base-image
localhost/debian-min:bookworm``. This machine's package-index settings (``pip config``: mirrors, local wheel
folders, CA bundle) are passed to the build as build arguments with the folders mounted read-only, for the build
only: nothing in the images depends on this machine. podman runs with ``images/containers.conf`` (runc, cgroupfs).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cxrlt import __version__  # noqa: E402
from cxrlt.ops.containers import (  # noqa: E402
    REVISION_LABEL,
    ContainerError,
    container_env,
    engine_command,
    stale_images,
)
from cxrlt.platform import IMAGES  # noqa: E402

#: image -> (Dockerfile, target, platform keys it is tagged as): train and tools are one environment, built once
BUILDS = {"cxrlt": ("cxrlt.Dockerfile", "cxrlt", ("tools", "train")),
          "serve-cpu": ("serve-cpu.Dockerfile", "serve-cpu", ("serve_cpu",)),
          "gateway": ("cxrlt.Dockerfile", "gateway", ("gateway",))}
HOST_CA = "/run/cxrlt-host-ca.crt"
#: Stages whose layers are the build cache (the environments): tagged, so that pruning the dangling images of a build
#: keeps them. Untagged, the last layer of such a stage has no child (the final stage copies from it) and the prune
#: below removed it, so every build reinstalled torch and the rest.
CACHE_STAGES = {"cxrlt": ("dependencies",), "gateway": ("gateway-dependencies",), "serve-cpu": ("builder",)}
CACHE_REPOSITORY = "localhost/cxrlt-build-cache"


def _pip_config() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    config = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        config[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    return config


def pip_build_args() -> list[str]:
    """Build arguments + read-only mounts for this machine's package-index settings (none on a plain machine)."""
    config, args, mounts = _pip_config(), [], set()
    for key, arg in (("index-url", "PIP_INDEX_URL"), ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
                     ("find-links", "PIP_FIND_LINKS")):
        value = config.get(key)
        if not value:
            continue
        args += ["--build-arg", f"{arg}={value}"]
        for item in value.split():
            path = item.removeprefix("file://")
            if path.startswith("/"):
                top = Path(path).parts[:3]  # /opt/pypi/simple -> /opt/pypi
                mounts.add(str(Path(*top)))
    if config.get("cert") and Path(config["cert"]).exists():
        args += ["--build-arg", f"PIP_CERT={HOST_CA}", "-v", f"{config['cert']}:{HOST_CA}:ro"]
    for m in sorted(mounts):
        if Path(m).exists():
            args += ["-v", f"{m}:{m}:ro"]
    return args


def revision() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def build(names: list[str], base_image: str, engine: list[str], skip_current: bool = False) -> None:
    env = container_env()
    if skip_current:
        head = revision()
        current = [n for n in names if not stale_images(engine, [IMAGES[k] for k in BUILDS[n][2]], head)]
        for name in current:
            print(f"{name}: already built from {head[:12]} (skipped)")
        names = [n for n in names if n not in current]
    # the revision label also as --label: a layer cache may keep the LABEL step of an earlier build (podman reused it
    # when nothing but the REVISION argument had changed), and tests trust this label to say what an image holds
    common = ["--build-arg", f"BASE_IMAGE={base_image}", "--build-arg", f"VERSION={__version__}",
              "--build-arg", f"REVISION={revision()}", "--label", f"{REVISION_LABEL}={revision()}", *pip_build_args()]
    if Path(engine[0]).name == "podman":
        common += ["--network", "host", "--layers"]
    for name in names:
        dockerfile, target, keys = BUILDS[name]
        tags = [arg for key in keys for arg in ("-t", IMAGES[key])]
        t0 = time.time()
        print(f"building {', '.join(IMAGES[k] for k in keys)} ({dockerfile}, base {base_image}) ...", flush=True)
        for stage in CACHE_STAGES.get(name, ()):
            subprocess.run([*engine, "build", "-f", str(ROOT / "images" / dockerfile), "--target", stage,
                            "-t", f"{CACHE_REPOSITORY}:{name}-{stage}", *common, str(ROOT)], check=True, env=env)
        subprocess.run([*engine, "build", "-f", str(ROOT / "images" / dockerfile), "--target", target, *tags,
                        *common, str(ROOT)], check=True, env=env)
        print(f"  built in {time.time() - t0:.0f} s", flush=True)
    # layers no tagged image or cache stage uses any more (earlier builds of changed sources): dropped
    subprocess.run([*engine, "image", "prune", "-f"], capture_output=True, env=env)
    print("\nimage sizes:")
    for name in BUILDS:
        for key in BUILDS[name][2]:
            size = subprocess.run([*engine, "image", "inspect", "--format", "{{.Size}}", IMAGES[key]],
                                  capture_output=True, text=True, env=env).stdout.strip()
            print(f"  {IMAGES[key]:<45} {int(size) / 1e9:6.2f} GB" if size.isdigit() else f"  {IMAGES[key]}: ?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-image", default=os.environ.get("BASE_IMAGE", "python:3.11-slim"))
    ap.add_argument("--only", nargs="+", choices=list(BUILDS), default=list(BUILDS))
    ap.add_argument("--engine", choices=["podman", "docker"], default=None)
    ap.add_argument("--skip-current", action="store_true",
                    help="skip images already built from the checked-out commit (make test uses this)")
    args = ap.parse_args()
    try:
        engine = engine_command(args.engine)
    except ContainerError as exc:
        raise SystemExit(str(exc)) from None
    build(args.only, args.base_image, engine, args.skip_current)


if __name__ == "__main__":
    main()
