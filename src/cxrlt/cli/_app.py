"""The root ``cxrlt`` Typer app and what every sub-app module shares (options, error exit, image inputs)."""

from __future__ import annotations

import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from cxrlt.errors import CxrltError


class _Commands(TyperGroup):
    """The root command group: the one place where cxrlt's errors become ``error: <message>`` and exit status 1.

    A :class:`~cxrlt.errors.CxrltError` (and a missing file named on the command line) is the user's to fix and is
    printed without a traceback; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (CxrltError, FileNotFoundError) as exc:
            _fail(str(exc))


app = typer.Typer(
    cls=_Commands,
    help="cxrlt: long-tailed (30 known findings) and zero-shot (6 unseen findings) chest X-ray classification.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

class Split(StrEnum):
    """Labelled image lists a command reads by name (CXRLT_2026_<split>_labels.csv)."""

    dev = "dev"
    test = "test"


#: serving choices; each value is its member's name (StrEnum's functional form)
OnnxRuntime = StrEnum("OnnxRuntime", ["python", "native", "aoti"])
Device = StrEnum("Device", ["cpu", "gpu"])
Precision = StrEnum("Precision", ["fp32", "fp16"])


DataDir = Annotated[Path, typer.Option("--data", help="CXR-LT data directory (CSV files + images/).")]


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _image_inputs(images: list[Path] | None, data: Path | None, split: str) -> tuple[list[Path], list[str]]:
    """Explicit files, or the ImageIDs of DATA/CXRLT_2026_<split>_labels.csv; returns (paths, ImageIDs)."""
    from cxrlt.data.tables import IMAGES_DIR, read_id_list

    if images:
        return list(images), [p.name for p in images]
    if data is None:
        _fail("give --data DIR or image files")
    ids = read_id_list(data / f"CXRLT_2026_{split}_labels.csv")
    return [data / IMAGES_DIR / i for i in ids], ids


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
