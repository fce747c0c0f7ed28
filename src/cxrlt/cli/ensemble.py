"""``cxrlt ensemble``: fit and inspect per-view ensembles."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import DataDir, app

ensemble_app = typer.Typer(help="Fit and inspect per-view ensembles.", no_args_is_help=True)
app.add_typer(ensemble_app, name="ensemble")


@ensemble_app.command("build")
def ensemble_build(
    runs: Annotated[Path, typer.Option(help="Directory with router/ and <view>/<kind>/ member runs.")],
    data: DataDir,
    config: Annotated[Path, typer.Option(help="Profile YAML used for training.")],
    out: Annotated[Path, typer.Option(help="Ensemble directory to write.")],
) -> None:
    """Grid-search each view's member weights on validation mAP (simplex, step from the profile) and bundle."""
    from cxrlt.config import load_config
    from cxrlt.data.tables import TRAINING_CSV
    from cxrlt.ensemble import build_ensemble

    spec = build_ensemble(runs, out, data / TRAINING_CSV, load_config(config))
    for view, v in spec["views"].items():
        typer.echo(f"{view}: weights {v['weights']} val mAP {v['val_mAP']:.4f} (members {v['val_mAP_members']})")
