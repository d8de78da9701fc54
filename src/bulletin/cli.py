"""The ``bulletin`` command: serve, worker, consume, migrate, orgs, keys, sandbox, devservers.

It is over 400 lines because each command is a short function of its own, registered on one
Typer app; what the commands share (reading settings, printing problems) sits beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import structlog
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin import logs, metrics, migrate, supervisor
from bulletin.app import create_app
from bulletin.bootstrap import Prepare, open_database, running, wait_for_database
from bulletin.channels.configs import check_settings
from bulletin.config import Settings, normalize_database_url
from bulletin.crypto import generate_key
from bulletin.db import Database
from bulletin.errors import Conflict, InvalidRequest, NotFound
from bulletin.orgs import service as orgs
from bulletin.orgs.keys import Scope
from bulletin.orgs.service import IssuedKey
from bulletin.sandbox import repository as sandbox
from bulletin.web.portal import accounts
from bulletin.web.portal.passwords import new_password

if TYPE_CHECKING:
    from bulletin.devservers.run import DevServers

app = typer.Typer(
    help="Bulletin: announcements and notifications, delivered once.",
    no_args_is_help=True,
    add_completion=False,
)
orgs_app = typer.Typer(help="Organizations (tenants).", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
sandbox_app = typer.Typer(help="What the sandbox provider recorded.", no_args_is_help=True)
users_app = typer.Typer(help="People who sign in to the portal.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(orgs_app, name="orgs")
app.add_typer(keys_app, name="keys")
app.add_typer(sandbox_app, name="sandbox")

out = Console()
err = Console(stderr=True)
log = structlog.get_logger("bulletin.cli")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def _settings() -> Settings:
    settings = Settings()
    check_settings(settings)
    logs.configure(settings.log_level, settings.log_format)
    return settings


def _show_key(key: IssuedKey, title: str) -> None:
    out.print(
        Panel.fit(
            f"organization  {key.org_id}\n"
            f"scope         {key.scope.value}\n"
            f"API key       [bold]{key.secret}[/bold]\n"
            "\nThis is shown once. Keep it somewhere safe.",
            title=title,
        )
    )


FIRST_PORTAL_EMAIL = "admin@bulletin.local"
#: The first start's credentials file, beside the SQLite database or in the working directory.
CREDENTIALS_FILE = "bulletin-credentials.txt"


def _first_start_lines(key: IssuedKey, password: str) -> str:
    # One item a line: a narrow terminal would wrap a long line inside the password.
    return (
        f"organization  {key.org_id}\n"
        f"scope         {key.scope.value}\n"
        f"API key       {key.secret}\n"
        "portal        /portal\n"
        f"email         {FIRST_PORTAL_EMAIL}\n"
        f"password      {password}\n"
    )


def credentials_path(settings: Settings) -> Path:
    """Where the first start writes its credentials when no one is watching a terminal."""
    if settings.credentials_file:
        return Path(settings.credentials_file)
    if settings.is_sqlite:
        database = make_url(settings.database_url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            return Path(database).parent / CREDENTIALS_FILE
    return Path(CREDENTIALS_FILE)


def write_credentials(path: Path, text: str) -> Path:
    """Write ``text`` to a new file that only its owner can read, and return its absolute path.

    The file is created with mode 0600 in one step (never readable by others, not even for
    an instant), never overwrites anything and never follows a link: when ``path`` exists (an
    earlier installation's), ``name-1.txt``, ``name-2.txt``... is used instead.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for n in range(100):
        candidate = path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")
        try:
            fd = os.open(candidate, flags, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        return candidate.absolute()
    raise FileExistsError(f"{path} and 99 numbered files beside it exist already")


def _first_start(settings: Settings) -> Prepare:
    """On an empty database, create the default organization, its admin key and a portal
    user, and hand the key and the user's password over once.

    On a terminal they are shown in a panel. Otherwise (a service manager, a container, a
    pipe: whatever captures the output keeps it) they are written to a file only the owner
    can read (see :func:`write_credentials`), and the log says where. The file is written
    before the transaction commits: if it cannot be, nothing is created, and the next start
    tries again, instead of leaving an organization whose key no one ever saw.
    """

    async def first_start(db: Database) -> None:
        password = new_password()
        on_terminal = sys.stdout.isatty()
        written: Path | None = None
        async with db.transaction() as session:
            key = await orgs.create_default_if_empty(session)
            if key is None:
                return
            await accounts.create_user(session, key.org_id, FIRST_PORTAL_EMAIL, "Admin", password)
            text = _first_start_lines(key, password)
            if not on_terminal:
                target = credentials_path(settings)
                try:
                    written = write_credentials(
                        target,
                        "Bulletin is set up. This is shown once: keep it somewhere safe, then "
                        f"delete this file.\n\n{text}",
                    )
                except OSError as exc:  # not an outage: the start fails, saying why
                    raise RuntimeError(
                        f"cannot write the first start's credentials to {target}: "
                        f"{exc.strerror or exc}; set BULLETIN_CREDENTIALS_FILE"
                    ) from None
        if written is not None:
            log.warning("first_start.credentials_written", path=str(written))
        else:
            out.print(
                Panel.fit(
                    f"{text}\nThis is shown once. Keep it somewhere safe.",
                    title="Bulletin is set up",
                )
            )

    return first_start


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Listen address (BULLETIN_HOST); links name it without a public URL."),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Listen port (BULLETIN_PORT); links name it without BULLETIN_PUBLIC_URL.",
        ),
    ] = None,
    worker: Annotated[
        bool, typer.Option("--worker/--no-worker", help="Also run the delivery engine.")
    ] = True,
    migrate_: Annotated[
        bool, typer.Option("--migrate/--no-migrate", help="Apply migrations first.")
    ] = True,
    processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes serving the API on the one port, each with its own engine unless "
            "--no-worker; more than one needs PostgreSQL (BULLETIN_API_PROCESSES).",
        ),
    ] = None,
    shared_port: Annotated[
        bool, typer.Option("--shared-port", hidden=True, help="One of --processes N.")
    ] = False,
) -> None:
    """Run the API (and, by default, the delivery engine) in this process.

    It listens at once; until the database answers and is migrated, ``/ready`` and every
    endpoint but ``/health`` answer 503, and the engine waits. With ``--processes N`` this
    process supervises N such processes sharing the port (see :mod:`bulletin.supervisor`).
    """
    settings = _settings()
    host = host or settings.host
    port = port or settings.port
    # Links, List-Unsubscribe and Twilio's StatusCallback (signed over it) name this server
    # by the address it really listens on, unless BULLETIN_PUBLIC_URL names another.
    settings = settings.model_copy(update={"host": host, "port": port})
    if not shared_port:  # the supervisor warns once for its processes
        _warn_if_links_are_local(settings)
    processes = processes or settings.api_processes
    if processes > 1:
        if normalize_database_url(settings.database_url).startswith("sqlite"):
            err.print("[red]Several API processes need PostgreSQL: SQLite is served by one.[/]")
            raise typer.Exit(2)
        out.print(f"Bulletin on http://{host}:{port} in {processes} processes")
        command = supervisor.serve_command(host, port, worker=worker, migrate=migrate_)
        grace = settings.shutdown_grace_seconds + 10
        raise typer.Exit(supervisor.Supervisor(command, processes, grace).run())
    if not shared_port:
        out.print(f"Bulletin on http://{host}:{port}  (API docs: http://{host}:{port}/docs)")
    config = uvicorn.Config(
        create_app(
            settings, run_worker=worker, migrate_it=migrate_, prepare=_first_start(settings)
        ),
        host=host,
        port=port,
        log_level=settings.log_level,
        # Bulletin's logging renders uvicorn's lines too (as JSON with BULLETIN_LOG_FORMAT=json),
        # and its own http.request line, with the request id, replaces the access log.
        log_config=None,
        access_log=False,
        # Only these proxies may name the client (X-Forwarded-For): per-address limits count it.
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    sockets = None
    if shared_port:
        try:
            sockets = [supervisor.shared_port_socket(host, port)]
        except OSError as exc:
            err.print(f"[red]Cannot listen on {host}:{port}: {exc}[/red]")
            raise typer.Exit(supervisor.CANNOT_START) from None
    server = uvicorn.Server(config)
    _freeze_heap()
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C has already stopped the server
        server.run(sockets=sockets)
    if not server.started:
        raise typer.Exit(supervisor.CANNOT_START)  # as uvicorn.run does


def _warn_if_links_are_local(settings: Settings) -> None:
    """Say so when the links people get and the callbacks providers are given would name an
    address only this machine reaches (no one else could follow or call them), or one that is
    not https (no one-click unsubscribe)."""
    if settings.base_url_is_local:
        log.warning(
            "public_url.local_only",
            public_url=settings.base_url,
            hint="links and provider callbacks use this address, which only this machine "
            "reaches; set BULLETIN_PUBLIC_URL to the address people and providers use",
        )
    elif not settings.base_url.startswith("https://"):
        log.warning(
            "public_url.not_https",
            public_url=settings.base_url,
            hint="emails offer no one-click unsubscribe (RFC 8058 asks for an https link, and "
            "large mailbox providers require one-click of bulk senders); serve Bulletin "
            "behind https and set BULLETIN_PUBLIC_URL to that address",
        )


def _freeze_heap() -> None:
    """Leave what exists now out of every later garbage collection.

    What start-up made (modules, the app and its routes, settings, compiled statements) lives
    as long as the process. Left in the heap, each full collection walks all of it, and
    stops every request and send of the process for a tenth of a second or more (the API's
    p99 latency was five times its median for this alone).
    """
    gc.collect()
    gc.freeze()


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
        if started.done():
            _freeze_heap()
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
    """Run only the delivery engine (to scale out next to API processes).

    The links and callback URLs it sends name BULLETIN_PUBLIC_URL or, without it, the API's
    address from BULLETIN_HOST and BULLETIN_PORT (it has no --host or --port): give it the
    same settings as the API processes.
    """
    settings = _settings()
    _warn_if_links_are_local(settings)
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


def _consume_settings() -> Settings:
    """The settings, or one line per refused setting (never its value: it may hold a password)."""
    try:
        return _settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = f"BULLETIN_{str(error['loc'][0]).upper()}" if error["loc"] else "Settings"
            reason = str(error["msg"]).removeprefix("Value error, ")
            err.print(f"[red]{name}: {reason}[/red]", highlight=False)
        raise typer.Exit(2) from None


async def _run_consume(settings: Settings) -> None:
    from bulletin.consumers import run as consumers  # aio-pika: not loaded by other commands

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    db = open_database(settings)
    try:
        # Until the database answers and is migrated, unless told to stop first.
        ready = asyncio.create_task(wait_for_database(db, migrate_it=False))
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (ready, stopped):
            task.cancel()
        await asyncio.gather(stopped, return_exceptions=True)
        if stop.is_set():
            await asyncio.gather(ready, return_exceptions=True)
            return
        await ready  # raises what waiting does not cure
        _freeze_heap()
        await consumers.consume(settings, db, stop)
    finally:
        await db.dispose()


@app.command()
def consume() -> None:
    """Accept events from a RabbitMQ queue, as POST /v1/events does, each acknowledged once
    what it became is committed.

    The queue (BULLETIN_CONSUME_QUEUE on BULLETIN_AMQP_URL) is declared durable, with
    '<queue>.dead' beside it: an event that is not JSON, names no organization the queue
    serves, or is refused goes there, with the reason in its x-bulletin-reason and
    x-bulletin-errors headers. Whose events the queue carries: BULLETIN_CONSUME_ORG, or
    BULLETIN_CONSUME_ORGS with an 'organization' key in each event. An event id seen before
    creates nothing, so an event delivered again (after a crash) is harmless. SIGTERM
    finishes the batch in hand, then stops.
    """
    settings = _consume_settings()
    from bulletin.consumers import run as consumers

    # aiormq logs each failed connection as an error with its own words; the consumer logs
    # it once, as consume.source_unavailable, with what it does next.
    logging.getLogger("aiormq.connection").setLevel(logging.CRITICAL)
    try:
        consumers.routing(settings)
    except consumers.NotConfigured as exc:
        err.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from None
    try:
        asyncio.run(_run_consume(settings))
    except NotFound as exc:
        err.print(f"[red]{exc.detail} (BULLETIN_CONSUME_ORG or BULLETIN_CONSUME_ORGS)[/red]")
        raise typer.Exit(1) from None


#: The first line of a settings file ``bulletin devservers`` writes; it replaces no other file.
DEVSERVERS_ENV_MARK = "# Written by `bulletin devservers`"
#: Where ``bulletin devservers`` listens, and where it expects Bulletin, unless told otherwise:
#: fixed, so that the addresses in the settings it prints are the same on every run.
DEVSERVERS_BULLETIN_URL = "http://127.0.0.1:8000"
DEVSERVERS_WHATSAPP_PORT = 9011
DEVSERVERS_TWILIO_PORT = 9012
DEVSERVERS_SMTP_PORT = 9025


@app.command("devservers")
def devservers_command(
    bulletin_url: Annotated[
        str,
        typer.Option(
            "--bulletin-url",
            help="Where `bulletin serve` listens: the WhatsApp stand-in posts its webhooks "
            "there (Twilio's go to the StatusCallback each message names).",
        ),
    ] = DEVSERVERS_BULLETIN_URL,
    whatsapp_port: Annotated[
        int, typer.Option(min=0, max=65535, help="WhatsApp Cloud API stand-in (0: any free).")
    ] = DEVSERVERS_WHATSAPP_PORT,
    twilio_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Twilio stand-in (0: any free).")
    ] = DEVSERVERS_TWILIO_PORT,
    smtp_port: Annotated[
        int, typer.Option(min=0, max=65535, help="SMTP stand-in (0: any free).")
    ] = DEVSERVERS_SMTP_PORT,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="Also write the settings to this file (owner-only); as .env in the directory "
            "`bulletin serve` runs in, it is read from there. Replaces only a file it wrote.",
        ),
    ] = None,
) -> None:
    """Run stand-ins for the WhatsApp Cloud API, Twilio and SMTP on 127.0.0.1, and print the
    settings that point Bulletin at them: real adapters send, and receipts come back, without
    any provider account. Ctrl-C stops them.
    """
    from bulletin.devservers import run as devservers  # not loaded by the other commands

    logs.configure()
    # aiosmtpd logs every SMTP command and aiohttp every request; what each stand-in took is
    # logged once, as devservers.* events.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    target = urlsplit(bulletin_url)
    if target.scheme not in ("http", "https") or not target.hostname:
        err.print(f"[red]--bulletin-url {bulletin_url!r} is not an http(s) address.[/red]")
        raise typer.Exit(2)
    servers = devservers.DevServers(
        bulletin_url=bulletin_url,
        whatsapp_port=whatsapp_port,
        twilio_port=twilio_port,
        smtp_port=smtp_port,
    )
    asyncio.run(_run_devservers(servers, env_file))


async def _run_devservers(servers: DevServers, env_file: Path | None) -> None:
    from bulletin.devservers.run import environment_text

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(servers)
        except OSError as exc:
            err.print(f"[red]Cannot start the stand-ins: {exc}[/red] (choose other ports)")
            raise typer.Exit(1) from None
        settings = environment_text(servers.environment())
        if env_file is not None:
            try:
                _write_env_file(
                    env_file, f"{DEVSERVERS_ENV_MARK}; it replaces this file.\n{settings}"
                )
            except OSError as exc:
                err.print(f"[red]Cannot write {env_file}: {exc}[/red]")
                raise typer.Exit(1) from None
        typer.echo(
            "# Settings that point Bulletin at the stand-ins. Paste them into the terminal "
            "where you run `bulletin serve`.\n" + settings
        )
        env = servers.environment()
        err.print(
            "Stand-ins on 127.0.0.1 (Ctrl-C stops them):\n"
            f"  WhatsApp Cloud API  {env['BULLETIN_WHATSAPP_BASE_URL']}, "
            f"webhooks to {servers.whatsapp_webhook_url}\n"
            f"  Twilio              {env['BULLETIN_TWILIO_BASE_URL']}, "
            "status callbacks to the URL each message names\n"
            f"  SMTP                {env['BULLETIN_SMTP_HOST']}:{env['BULLETIN_SMTP_PORT']}"
            + (f"\nSettings written to {env_file}." if env_file is not None else ""),
            highlight=False,
            soft_wrap=True,
        )
        await stop.wait()
        log.info("devservers.stopping")


def _write_env_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it holds secrets).

    An existing file is replaced only if this command wrote it: a ``.env`` may hold a
    person's own settings, and those are not ours to lose.
    """
    if path.is_symlink() or path.exists():
        with path.open(encoding="utf-8", errors="replace") as existing:
            if not existing.readline().startswith(DEVSERVERS_ENV_MARK):
                raise FileExistsError("it exists and `bulletin devservers` did not write it")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)


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


def _org_id(org: str) -> uuid.UUID:
    try:
        return uuid.UUID(org)
    except ValueError:
        err.print(f"[red]{org!r} is not an organization id.[/red]")
        raise typer.Exit(2) from None


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    scope: Annotated[Scope, typer.Option("--scope", help="admin, send or read.")] = Scope.SEND,
    name: Annotated[str | None, typer.Option(help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key for an organization and print it (once)."""
    settings = _settings()
    org_id = _org_id(org)

    async def make(session: AsyncSession) -> IssuedKey:
        return await orgs.create_key(session, org_id, scope, name=name)

    try:
        key = asyncio.run(_in_transaction_key(settings, make))
    except NotFound as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    _emit(key, as_json, f"New {scope.value} key")


@keys_app.command("list")
def keys_list(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    as_json: JsonFlag = False,
) -> None:
    """List an organization's API keys (never their secrets), revoked ones included."""
    settings = _settings()
    org_id = _org_id(org)

    async def run() -> list[dict[str, object]]:
        db = open_database(settings)
        try:
            await wait_for_database(db, migrate_it=True)
            async with db.read() as session:
                await orgs.get_organization(session, org_id)  # NotFound if there is none
                keys: list[dict[str, object]] = []
                cursor = None
                while True:
                    page = await orgs.page_keys(session, org_id, cursor, 1000)
                    keys += [k.model_dump(mode="json") for k in page.items]
                    if page.next_cursor is None:
                        return keys
                    cursor = page.next_cursor
        finally:
            await db.dispose()

    try:
        keys = asyncio.run(run())
    except NotFound as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(keys))
        return
    table = Table("id", "name", "scope", "prefix", "created", "last used", "revoked")
    for key in keys:
        table.add_row(
            *(str(key[field] or "") for field in ("id", "name", "scope", "prefix", "created_at")),
            str(key["last_used_at"] or "never"),
            str(key["revoked_at"] or ""),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="The key's id (see 'bulletin keys list').")],
    org: Annotated[
        str | None, typer.Option("--org", help="Only if the key belongs to this organization.")
    ] = None,
) -> None:
    """Revoke an API key. Running servers refuse it within BULLETIN_API_KEY_CACHE_SECONDS.

    An organization's last active admin key cannot be revoked: create another first.
    """
    settings = _settings()
    try:
        key_id = uuid.UUID(key)
    except ValueError:
        err.print(f"[red]{key!r} is not a key id.[/red]")
        raise typer.Exit(2) from None
    org_id = _org_id(org) if org is not None else None

    async def run() -> None:
        db = open_database(settings)
        try:
            await wait_for_database(db, migrate_it=True)
            async with db.transaction() as session:
                await orgs.revoke_key(session, key_id, org_id=org_id)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except (NotFound, Conflict) as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    err.print(
        f"Key {key_id} revoked. Running servers refuse it within "
        f"{settings.api_key_cache_seconds:g} s (BULLETIN_API_KEY_CACHE_SECONDS)."
    )


@users_app.command("add")
def users_add(
    org: Annotated[str, typer.Option("--org", help="Organization id.")],
    email: Annotated[str, typer.Option("--email", help="What the person signs in with.")],
    name: Annotated[str, typer.Option("--name", help="The person's name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
) -> None:
    """Create a portal user of an organization (the password is prompted for)."""
    settings = _settings()
    org_id = _org_id(org)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def run() -> None:
        db = open_database(settings)
        try:
            await wait_for_database(db, migrate_it=True)
            async with db.transaction() as session:
                await accounts.create_user(session, org_id, email, name, password)
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except InvalidRequest as exc:
        reasons = "; ".join(f"{e.loc[-1]}: {e.message}" for e in exc.errors)
        err.print(f"[red]{exc.detail} {reasons}[/red]")
        raise typer.Exit(2) from None
    except (NotFound, Conflict) as exc:
        err.print(f"[red]{exc.detail}[/red]")
        raise typer.Exit(1) from None
    out.print(f"Portal user {email} created; sign in at /portal.")


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
