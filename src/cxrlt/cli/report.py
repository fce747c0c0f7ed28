"""``cxrlt report``: reproduce the result tables in docs/results.md (synthetic data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import app

report_app = typer.Typer(help="Reproduce the result tables in docs/results.md (synthetic data).",
                         no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("task1")
def report_task1(
    work: Annotated[Path, typer.Option(help="Working directory (data, runs, ensemble); reused if present.")] = Path(
        "report_work/task1"),
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    out: Annotated[Path, typer.Option(help="Markdown file whose Task 1 section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 2500,
    size: Annotated[int, typer.Option(help="Synthetic image size.")] = 64,
) -> None:
    """Train every Task 1 member on synthetic data, build both ensembles, run the loss ablation, write the table."""
    from cxrlt.reports import task1_report, update_section

    text = task1_report(work, config, n_images=n_images, size=size)
    update_section(out, "task1", text)
    typer.echo(text)


@report_app.command("task2")
def report_task2(
    work: Annotated[Path, typer.Option(help="Working directory; reused if present.")] = Path("report_work/task2"),
    config: Annotated[Path, typer.Option(help="Profile YAML.")] = Path("configs/tiny.yaml"),
    out: Annotated[Path, typer.Option(help="Markdown file whose Task 2 section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 2000,
    epochs: Annotated[int, typer.Option(help="Epochs per CLIP model.")] = 10,
) -> None:
    """Train the zero-shot CLIP with alpha 0 / 1.0 / 1.5, compare prompts, run the proxy groups, write the tables."""
    from cxrlt.reports import task2_report, update_section

    text = task2_report(work, config, n_images=n_images, epochs=epochs)
    update_section(out, "task2", text)
    typer.echo(text)


@report_app.command("recipes")
def report_recipes(
    work: Annotated[Path, typer.Option(help="Working directory; reused if present.")] = Path("report_work/recipes"),
    out: Annotated[Path, typer.Option(help="Markdown file whose recipes section is (re)written.")] = Path(
        "docs/results.md"),
    n_images: Annotated[int, typer.Option(help="Synthetic images to generate.")] = 1500,
    seeds: Annotated[str, typer.Option(help="Comma-separated training seeds.")] = "0,1,2",
) -> None:
    """Train the seed-000 and HPH recipes (CPU size) on one synthetic dataset for several seeds; write the table."""
    from cxrlt.reports import recipes_report, update_section

    root = Path(__file__).resolve().parents[2]  # the checkout: configs/ lives there
    text = recipes_report(work, root, n_images=n_images, seeds=tuple(int(s) for s in seeds.split(",")))
    update_section(out, "recipes", text)
    typer.echo(text)
