"""Command line of the chaos harness; ``python -m benchmarks.chaos --help``."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from benchmarks.chaos.run import Options, Result, run


def show(result: Result, console: Console) -> None:
    r, w = result.report, result.webhooks
    table = Table(title="Chaos run", show_header=False)
    rows = [
        ("machine", result.machine),
        ("duration (s)", f"{result.duration_seconds} (load {result.load_seconds})"),
        (
            "processes killed (SIGKILL)",
            f"{result.kills['api']} API, {result.kills['worker']} worker",
        ),
        ("PostgreSQL crashes (immediate stop + start)", str(result.database_restarts)),
        ("messages accepted", f"{r.messages_accepted} (in Bulletin: {r.messages_in_bulletin})"),
        (
            "messages cancelled",
            f"{result.messages_cancelled} of {result.cancels_requested} "
            f"cancel requests ({result.cancels_too_late} too late)",
        ),
        ("deliveries expected", str(r.deliveries_expected)),
        (
            "deliveries in Bulletin",
            f"{r.deliveries_in_bulletin} {dict(sorted(r.by_state.items()))}",
        ),
        ("sends the provider accepted", str(r.provider_accepted)),
        ("provider faults injected", str(dict(sorted(result.provider_faults.items())))),
        ("duplicates", str(r.duplicates)),
        ("lost", str(r.lost)),
        ("unknown", f"{r.unknown} ({r.unknown_explained} explained) {r.unknown_reasons}"),
        ("unknown settled later by receipts", str(r.settled_by_receipts)),
        ("sends started after a cancel returned", str(r.sends_after_cancel)),
        ("client retries", str(dict(sorted(result.client_retries.items())))),
        (
            "webhook events expected",
            f"{sum(w.expected.values())} {w.expected} (outbox rows: {w.outbox})",
        ),
        ("webhooks received (unique webhook-id)", str(w.received)),
        ("webhooks missing", str(w.missing)),
        ("webhooks received again (retries)", str(w.duplicates)),
        ("webhooks answered 500 on purpose", str(w.faults)),
        (
            "webhooks invalid / unexpected / failed / pending",
            f"{w.invalid} / {w.unexpected} / {w.failed} / {w.pending} "
            f"(endpoint {w.endpoint_state})",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    for error in result.server_errors:
        console.print(f"[red]server error: {error}[/red]")
    for problem in [*r.problems, *w.problems]:
        console.print(f"[red]{problem}[/red]")
    console.print("[green]OK[/green]" if result.ok else "[red]FAILED[/red]")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    parser.add_argument("--deliveries", type=int, default=100_000, help="At least this many.")
    parser.add_argument("--apis", type=int, default=2, help="API processes.")
    parser.add_argument("--workers", type=int, default=3, help="Worker processes.")
    parser.add_argument("--kill-every", type=float, default=4.0, help="Mean seconds between kills.")
    parser.add_argument("--database-restarts", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    parser.add_argument("--keep", type=Path, help="Keep logs and the database in this folder.")
    args = parser.parse_args()
    options = Options(
        deliveries=args.deliveries,
        apis=args.apis,
        workers=args.workers,
        kill_every=args.kill_every,
        database_restarts=args.database_restarts,
        seed=args.seed,
        folder=args.keep,
        keep=args.keep is not None,
    )
    result = asyncio.run(run(options))
    show(result, Console())
    if args.json:
        args.json.write_text(json.dumps(result.to_json(), indent=2, default=str))
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
