"""``python -m benchmarks``: every benchmark scenario, one table, and the figures as JSON.

Scenarios (``--only`` picks some, in this order): ``floor`` (raw PostgreSQL doing the same row
work), ``fanout``, ``e2e`` (end-to-end throughput with worker processes), ``lateness``
(scheduling), ``api`` (``POST /v1/notifications``), ``pacing``, ``events`` (events in, by
``POST /v1/events/batch`` and by ``bulletin consume`` from RabbitMQ) and ``webhooks`` (status
webhooks out). Each runs ``--runs`` times on fresh databases; the table shows medians, the
target each is held to, and on PostgreSQL the ratio to the floor. ``--quick`` shrinks every
scenario to a smoke test of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import json
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import Result, machine

#: Scenario name -> module; the floor first, so that the others can be compared with it.
SCENARIOS = {
    "floor": "benchmarks.floor",
    "fanout": "benchmarks.fanout",
    "e2e": "benchmarks.throughput",
    "lateness": "benchmarks.lateness",
    "api": "benchmarks.api",
    "pacing": "benchmarks.pacing",
    "events": "benchmarks.events",
    "webhooks": "benchmarks.webhooks",
}
#: Which floor figure each throughput is compared with.
FLOOR_OF = {
    "rows_per_s": "fanout_rows_per_s",
    "deliveries_per_s": "claim_complete_rows_per_s",
}

Scenario = Callable[[argparse.Namespace, Path], Awaitable[list[Result]]]
AddArguments = Callable[[argparse.ArgumentParser], None]


def _parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=3, help="Runs of each setting (medians).")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke test.")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmark-results.json"), help="Figures as JSON."
    )
    parser.add_argument("--markdown", type=Path, help="Also write the table as Markdown here.")
    parser.add_argument(
        "--profile",
        type=Path,
        help="Sample Bulletin's processes with py-spy into this folder "
        "(read with python -m benchmarks.profile).",
    )
    return parser


def ratio_to_floor(result: Result, floor: Result | None) -> str:
    if floor is None or not result.setting.startswith("postgresql"):
        return ""
    for figure, floor_figure in FLOOR_OF.items():
        if figure in result.runs[0]:
            return f"{result.medians[figure] / floor.medians[floor_figure]:.2f}"
    return ""


def as_markdown(results: list[Result], floor: Result | None, about: dict[str, Any]) -> str:
    m = about["machine"]
    lines = [
        f"Measured {about['when']} on {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
        f"Python {m['python']}, Linux {m['kernel']}; medians of {about['runs']} run(s).",
        "",
        "| scenario | setting | figures (medians) | target | met | x floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        met = {None: "", True: "yes", False: "**no**"}[r.met]
        target = "" if r.target is None else r.target[2]
        ratio = ratio_to_floor(r, floor)
        lines.append(f"| {r.scenario} | {r.setting} | {r.figures()} | {target} | {met} | {ratio} |")
    return "\n".join(lines) + "\n"


def report(
    results: list[Result],
    path: Path | None,
    about: dict[str, Any],
    markdown: Path | None = None,
) -> None:
    floor = next((r for r in results if r.scenario == "floor"), None)
    table = Table(title=f"Bulletin benchmarks, medians of {about['runs']} run(s)")
    for column in ("scenario", "setting", "figures", "target", "met", "x floor"):
        table.add_column(column, overflow="fold")
    for result in results:
        met = {None: "", True: "[green]yes[/]", False: "[red]NO[/]"}[result.met]
        target = "" if result.target is None else result.target[2]
        table.add_row(
            result.scenario,
            result.setting,
            result.figures(),
            target,
            met,
            ratio_to_floor(result, floor),
        )
    console = Console(width=200)
    console.print(
        f"{about['machine']['cpus']} CPUs ({about['machine']['cpu']}), "
        f"{about['machine']['memory_gib']} GiB, Python {about['machine']['python']}"
    )
    console.print(table)
    if markdown is not None:
        markdown.write_text(as_markdown(results, floor, about))
        console.print(f"table written to {markdown}")
    if path is not None:
        document = {
            **about,
            "results": [
                {**r.as_json(), "ratio_to_floor": ratio_to_floor(r, floor) or None} for r in results
            ],
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"figures written to {path}")


async def _run(
    scenarios: list[tuple[Scenario, AddArguments]], args: argparse.Namespace
) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bulletin-bench-") as tmp:
        for scenario, _ in scenarios:
            results.extend(await scenario(args, Path(tmp)))
    return results


def _about(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "runs": args.runs,
        "quick": args.quick,
    }


def run_alone(scenario: Scenario, add_arguments: AddArguments) -> None:
    """Run one scenario module on its own (``python -m benchmarks.fanout``)."""
    parser = _parser(scenario.__module__)
    add_arguments(parser)
    args = parser.parse_args()
    about = _about(args)
    results = asyncio.run(_run([(scenario, add_arguments)], args))
    report(results, args.json, about, args.markdown)


def main() -> None:
    parser = _parser(__doc__.splitlines()[0] if __doc__ else "benchmarks")
    parser.add_argument(
        "--only", default=",".join(SCENARIOS), help=f"Some of: {', '.join(SCENARIOS)}."
    )
    modules = {name: importlib.import_module(module) for name, module in SCENARIOS.items()}
    for module in modules.values():
        module.add_arguments(parser)
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    picked = [(modules[n].scenario, modules[n].add_arguments) for n in SCENARIOS if n in chosen]
    about = {**_about(args), "scenarios": chosen}
    report(asyncio.run(_run(picked, args)), args.json, about, args.markdown)


if __name__ == "__main__":
    main()
