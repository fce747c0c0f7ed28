"""``cxrlt demo``: the whole system on the embedded default, end to end, on synthetic data (``make demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import app
from cxrlt.demo import DemoOptions

_DEFAULTS = DemoOptions()


@app.command("demo")
def demo(
    workdir: Annotated[Path, typer.Option(help="Where everything is written.")] = _DEFAULTS.workdir,
    n_images: Annotated[int, typer.Option(help="Synthetic images (70 % train, 15 % dev, 15 % test).")]
    = _DEFAULTS.n_images,
    epochs: Annotated[int, typer.Option(help="Epochs of every network; 0 = the profile's (each kind its own).")]
    = _DEFAULTS.epochs,
    zeroshot_epochs: Annotated[int, typer.Option(help="Epochs of the zero-shot CLIP.")] = _DEFAULTS.zeroshot_epochs,
    config: Annotated[Path, typer.Option(help="Profile.")] = _DEFAULTS.config,
    verbose: Annotated[bool, typer.Option(help="Show every line of every step (kfp.local's executor JSON included) "
                                               "instead of banners, progress and results.")] = False,
    no_challenger: Annotated[bool, typer.Option(
        help="Skip the second retraining (a longer frontal schedule, 30 % of the lateral images removed) and its "
             "promotion, which the subgroup rule refuses.")] = False,
    containers: Annotated[bool, typer.Option(help="Run the pipeline's components and Triton in the project's images "
                                                  "(make images; podman or Docker) instead of the project venv.")]
    = False,
) -> None:
    """synthesise -> MLflow -> training pipeline (kfp.local) -> gate -> register -> promote -> Triton from
    models:/cxrlt-bundle@champion -> PNG and DICOM images over gRPC -> findings. Meanwhile, at idle CPU priority (it
    takes the cycles the first run leaves), a retraining with a longer frontal PCAM schedule that lost 30 % of its
    lateral training images: better overall, registered by its gate and refused at promotion by the subgroup rule.
    Everything it started is stopped at the end, also on failure."""
    from cxrlt.demo import run_demo

    run_demo(DemoOptions(workdir, n_images, epochs, zeroshot_epochs, config, verbose, no_challenger, containers))
