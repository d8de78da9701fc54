"""The ``bulletin`` command: serve, worker, migrate, orgs, keys, sandbox."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
import typer
import uvicorn
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin import logs, metrics, migrate
from bulletin.app import create_app
from bulletin.bootstrap import open_database, running, wait_for_database
from bulletin.config import Settings
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.errors import NotFound
from bulletin.orgs import service as orgs
from bulletin.orgs.keys import Scope
from bulletin.orgs.service import IssuedKey
from bulletin.sandbox import repository as sandbox

app = typer.Typer(
    help="Bulletin: announcements and notifications, delivered once.",
    no_args_is_help=True,
    add_completion=False,
)
orgs_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
sandbox_app = typer.Typer(help="What the sandbox provider recorded.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")
app.add_typer(keys_app, name="keys")
app.add_typer(sandbox_app, name="sandbox")

out = Console()
err = Console(stderr=True)
log = structlog.get_logger("bulletin.cli")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _settings() -> Settings:
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _show_key(key: IssuedKey, title: str) -> None:
    out.print(
        Panel.fit(
            f"organization  {key.org_id}\n"
            f"scope         {key.scope.value}\n"
            f"API key       [bold]{key.secret}[/bold]\n\n"
            "This key is shown once. Keep it somewhere safe.",
            title=title,
        )
    )


async def _first_start(db: Database) -> None:
    """On an empty database, create the default organization and print its admin key."""
    async with db.transaction() as session:
        key = await orgs.create_default_if_empty(session)
    if key is not None:
        _show_key(key, "Bulletin is set up")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run the delivery engine.")
    ] = True,
    migrate_: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first.")
    ] = True,
) -> None:
    """Run the API (and, by default, the delivery engine) in this process.

    It listens at once; until the database answers and is migrated, ``/ready`` and every
    endpoint but ``/health`` answer 503, and the engine waits.
    """
    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    out.print(f"Bulletin on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    uvicorn.run(
        create_app(settings, run_worker=worker, migrate_it=migrate_, prepare=_first_start),
        host=host,
        port=port,
        log_level=settings.log_level,
        # Bulletin's logging renders uvicorn's lines too (as JSON with BULLETIN_LOG_FORMAT=json),
        # and its own http.request line, with the request id, replaces the access log.
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )


async def _run_worker(settings: Settings, dispatch: bool, schedule: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Started without waiting, so that a stop signal is heard while the database is away.
    async with running(settings, dispatch=dispatch, schedule=schedule, wait=False) as svc:
        started = asyncio.create_task(svc.startup.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({started, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if started.done() and started.exception() is not None:
            stopped.cancel()
            raise typer.Exit(1)
        await stopped
        started.cancel()
        log.info("worker.stopping", grace_seconds=settings.shutdown_grace_seconds)


@app.command()
def worker(
    dispatch: Annotated[bool, typer.Option("--dispatch/--no-dispatch", help="Send.")] = True,
    schedule: Annotated[
        bool, typer.Option("--schedule/--no-schedule", help="Resolve due messages, reap leases.")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve this process's Prometheus metrics on this port (BULLETIN_METRICS_PORT).",
        ),
    ] = None,
) -> None:
    """Run only the delivery engine (to scale out next to API processes)."""
    settings = _settings()
    port = metrics_port or settings.metrics_port
    exporter = None
    if port is not None:
        try:
            exporter = metrics.serve_process_metrics(settings.host, port)
        except OSError as exc:
            err.print(f"[red]Cannot serve metrics on {settings.host}:{port}: {exc}[/red]")
            raise typer.Exit(1) from None
    try:
        asyncio.run(_run_worker(settings, dispatch, schedule))
    finally:
        if exporter is not None:
            exporter.close()


@app.command("secret-key")
def secret_key() -> None:
    """Print a new key for BULLETIN_SECRET_KEY, which encrypts provider secrets at rest.

    To rotate, put the new key first and keep the old one after a comma until every stored
    secret has been written again.
    """
    typer.echo(generate_key())


@app.command("migrate")
def migrate_command() -> None:
    """Bring the database schema to the newest version."""
    settings = _settings()

    async def run() -> None:
        db = open_database(settings)
        try:
            await migrate.upgrade(db)
        finally:
            await db.dispose()

    asyncio.run(run())
    err.print(f"Database is at revision {migrate.head_revision()}.")


async def _in_transaction_key(
    settings: Settings, make: Callable[[AsyncSession], Awaitable[IssuedKey]]
) -> IssuedKey:
    db = open_database(settings)
    try:
        await wait_for_database(db, migrate_it=True)
        async with db.transaction() as session:
            return await make(session)
    finally:
        await db.dispose()


def _emit(key: IssuedKey, as_json: bool, title: str) -> None:
    if as_json:
        typer.echo(
            json.dumps({"org_id": str(key.org_id), "api_key": key.secret, "scope": key.scope})
        )
    else:
        _show_key(key, title)


@orgs_app.command("create")
def orgs_create(
    name: Annotated[str, typer.Argument(help="The organization's name.")],
    as_json: JsonFlag = False,
) -> None:
    """Create an organization and print its id and an admin key."""
    settings = _settings()

    async def make(session: AsyncSession) -> IssuedKey:
        _, key = await orgs.create_organization(session, name)
        return key

    _emit(asyncio.run(_in_transaction_key(settings, make)), as_json, f"Organization {name!r}")


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    scope: Annotated[Scope, typer.Option("--scope", help="admin, send or read.")] = Scope.SEND,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key for an organization and print it (once)."""
    settings = _settings()
    try:
        org_id = uuid.UUID(org)
    except ValueError:
        err.print(f"[red]{org!r} is not an organization id.[/red]")
        raise typer.Exit(2) from None

    async def make(session: AsyncSession) -> IssuedKey:
        return await orgs.create_key(session, org_id, scope, name=name)

    try:
        key = asyncio.run(_in_transaction_key(settings, make))
    except NotFound as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    _emit(key, as_json, f"New {scope.value} key")


@orgs_app.command("list")
def orgs_list() -> None:
    """List organizations."""
    settings = _settings()

    async def run() -> list[tuple[str, str]]:
        db = open_database(settings)
        try:
            async with db.read() as session:
                return [(str(o.id), o.name) for o in await orgs.list_organizations(session)]
        finally:
            await db.dispose()

    table = Table("id", "name")
    for row in asyncio.run(run()):
        table.add_row(*row)
    out.print(table)


@sandbox_app.command("list")
def sandbox_list(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    message: Annotated[str | None, typer.Option("--message", help="Only this message.")] = None,
    limit: Annotated[int, typer.Option(help="How many, oldest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Show what the sandbox provider accepted."""
    settings = _settings()

    async def run() -> list[dict[str, object]]:
        db = open_database(settings)
        try:
            async with db.read() as session:
                page = await sandbox.page(
                    session,
                    uuid.UUID(org),
                    message_id=uuid.UUID(message) if message else None,
                    cursor=None,
                    limit=limit,
                )
            return [item.model_dump(mode="json") for item in page.items]
        finally:
            await db.dispose()

    items = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(items))
        return
    table = Table("delivery", "channel", "recipient", "address", "title", "attempts", "at")
    for item in items:
        table.add_row(
            str(item["delivery_id"]),
            str(item["channel"]),
            str(item["recipient"]),
            str(item["address"]),
            str(item["title"]),
            str(item["attempts"]),
            str(item["created_at"]),
        )
    out.print(table)


def main() -> None:
    app()
