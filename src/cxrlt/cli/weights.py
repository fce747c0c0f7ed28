"""``cxrlt weights`` (mirror and list pretrained weights) and ``cxrlt models`` (inspect a profile)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import _fail, app

weights_app = typer.Typer(help="Pretrained weights: mirror hub weights or files into object storage for air-gapped "
                               "clusters, and list a mirror.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


@weights_app.command("mirror")
def weights_mirror(
    specs: Annotated[list[str], typer.Argument(help="timm tags (convnextv2_tiny.fcmae_ft_in22k_in1k), open_clip tags "
                                                    "(with --clip-arch), weight files, s3:// or MLflow URIs.")],
    to: Annotated[str, typer.Option("--to", help="Mirror prefix, s3://BUCKET/PREFIX.")],
    name: Annotated[str | None, typer.Option(help="Name to store a single spec under (for files: the name the "
                                                  "profile's `pretrained` will use, e.g. chexzero).")] = None,
    clip_arch: Annotated[str | None, typer.Option(help="open_clip architecture the specs are CLIP weights of "
                                                       "(e.g. ViT-B-32-quickgelu).")] = None,
) -> None:
    """Copy weight files into the mirror with their sha256 and source (run where the hubs or files are reachable).

    Training resolves tags through the mirror first when the profile's weights_mirror or CXRLT_WEIGHTS_MIRROR names
    it, and verifies each file's sha256 before use.
    """
    from cxrlt.weights import mirror_weights

    if name and len(specs) > 1:
        _fail("--name applies to a single spec")
    for spec in specs:
        card = mirror_weights(spec, to, name, "open_clip" if clip_arch else "timm", clip_arch)
        typer.echo(f"mirrored {card['name']}: {card['file']} ({card['size'] / 1e6:.1f} MB, sha256 "
                   f"{card['sha256'][:16]}...) from {card['source']}")


@weights_app.command("list")
def weights_list(
    from_: Annotated[str, typer.Option("--from", help="Mirror prefix, s3://BUCKET/PREFIX.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the mirror cards as JSON.")] = False,
) -> None:
    """List the weights stored in a mirror: name, file, size, sha256 and where each came from."""
    from cxrlt.weights import list_mirror

    cards = list_mirror(from_)
    if as_json:
        typer.echo(json.dumps(cards, indent=2))
        return
    if not cards:
        typer.echo(f"no weights mirrored under {from_}")
    for c in cards:
        typer.echo(f"{c['name']:48} {c['file']:28} {c['size'] / 1e6:9.1f} MB  {c['sha256'][:16]}  {c['source']}")


@weights_app.command("check")
def weights_check(
    config: Annotated[Path, typer.Option(help="Profile YAML whose networks' weights to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Resolve every network's configured weights (mirror, Hugging Face cache, hub, file, s3:// or MLflow URI) and
    load each strictly into its network, reading no data. Exit code 1 when any is missing or does not fit; each
    failure says where it looked and the command that fixes it. The training pipeline runs this first."""
    from cxrlt.model_summary import check_weights

    rows = check_weights(config)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for r in rows:
            typer.echo(f"{r['network']:9} {r['status']:7} {r['pretrained'] or '-':44} "
                       f"{r['detail'] if r['status'] != 'failed' else ''}"
                       f"{'  sha256 ' + r['sha256'][:16] if r.get('sha256') else ''}")
        for r in rows:
            if r["status"] == "failed":
                typer.echo(f"\n{r['network']}: {r['detail']}", err=True)
    failed = [r["network"] for r in rows if r["status"] == "failed"]
    if failed:
        _fail(f"weights missing or not fitting for {', '.join(failed)} (details above)")


models_app = typer.Typer(help="Inspect the networks a profile defines.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("summary")
def models_summary(
    config: Annotated[Path, typer.Option(help="Profile YAML (configs/tiny.yaml, configs/paper.yaml, ...).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Every network of the profile: architecture, parameter count, input size, channels, normalisation, where its
    weights come from (tag, hub repository, file, mirror or random) and whether they are on this machine. Validates
    the profile and downloads nothing (cxrlt weights check loads them)."""
    from cxrlt.model_summary import format_table, summarize_profile

    rows = summarize_profile(config)
    typer.echo(json.dumps(rows, indent=2) if as_json else format_table(rows))
