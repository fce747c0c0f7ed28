"""``cxrlt shadow``: how a challenger served in shadow agrees with the champion on live traffic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cxrlt.cli._app import _fail, app

shadow_app = typer.Typer(help="Shadow scoring: the challenger's agreement with the champion on served traffic "
                              "(cxrlt serve build --shadow).", no_args_is_help=True)
app.add_typer(shadow_app, name="shadow")


@shadow_app.command("report")
def shadow_report(
    prometheus: Annotated[str | None, typer.Option(
        help="Prometheus base URL that scrapes the Triton servers (the window is summed over replicas).")] = None,
    window: Annotated[str, typer.Option(help="With --prometheus: the window, a Prometheus duration.")] = "7d",
    metrics_url: Annotated[str | None, typer.Option(
        help="Instead of Prometheus: one Triton metrics endpoint (totals since that server started).")] = None,
    challenger: Annotated[str | None, typer.Option(
        help="Only this challenger (as served: <registered model>/<version>).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="Profile whose gate.shadow_* settings say whether promotion would accept the agreement.")] = None,
    top: Annotated[int, typer.Option(help="Findings listed per pair, most flips first.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON instead.")] = False,
) -> None:
    """Per champion/challenger pair: items compared and dropped, and per finding the flip rate at the operating
    threshold, the mean absolute score difference and the score correlation (Pearson). With --config, also whether
    promotion's shadow requirement is met and, if not, why."""
    from cxrlt.ops.shadow import format_report, from_metrics, from_prometheus
    from cxrlt.shadow import judge

    if bool(prometheus) == bool(metrics_url):
        _fail("give one of --prometheus or --metrics-url")
    reports = from_prometheus(prometheus, window) if prometheus else from_metrics(metrics_url)
    if challenger:
        reports = {pair: r for pair, r in reports.items() if pair[1] == challenger}
    if not reports:
        _fail("no shadow scoring found" + (f" of {challenger}" if challenger else "") +
              " (was the repository built with cxrlt serve build --shadow, and has it served traffic?)")
    requirement = None
    if config is not None:
        from cxrlt.config import load_profile

        requirement = load_profile(config).gate.shadow_requirement()
    out = []
    for pair, report in reports.items():
        refusals = judge(report, requirement) if requirement else None
        out.append({"champion": pair[0], "challenger": pair[1], **report, "requirement_refusals": refusals})
        if not as_json:
            typer.echo(format_report(pair, report, top))
            if refusals is not None:
                typer.echo("  promotion's shadow requirement: " + ("met" if not refusals else
                                                                   "NOT met: " + "; ".join(refusals)))
    if as_json:
        typer.echo(json.dumps(out, indent=2))
