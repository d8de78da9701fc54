"""A TCP proxy that can take a database away and give it back, without touching the server.

Tests point Bulletin at :attr:`OutageProxy.url` instead of the real PostgreSQL. :meth:`cut`
resets every open connection at once, as a database restart or a network failure does, and
then refuses new ones (or, with ``hang=True``, accepts them and never answers, as a silent
network partition does). :meth:`restore` lets connections through again. The shared server
keeps running for every other test.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

from sqlalchemy.engine import make_url

from support.processes import free_port

_CHUNK = 65536


class OutageProxy:
    """Forwards ``127.0.0.1:<port>`` to an upstream address until told to cut."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = free_port()
        #: How many client connections were accepted and forwarded, in all.
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._hang = False
        self._links: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    def for_url(cls, url: str) -> OutageProxy:
        """A proxy in front of the server that the database URL ``url`` names."""
        parsed = make_url(url)
        return cls(parsed.host or "127.0.0.1", parsed.port or 5432)

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        return (
            make_url(url)
            .set(host="127.0.0.1", port=self.port)
            .render_as_string(hide_password=False)
        )

    @property
    def is_cut(self) -> bool:
        return self._server is None or self._hang

    async def start(self) -> None:
        """Listen and forward."""
        self._hang = False
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self, *, hang: bool = False) -> None:
        """Reset every open connection; refuse new ones (or, with ``hang``, never answer)."""
        server = None
        if hang:
            self._hang = True
        elif self._server is not None:
            server, self._server = self._server, None
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Forward new connections again."""
        self._hang = False
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self._writers.add(client_w)
        upstream_w: asyncio.StreamWriter | None = None
        try:
            if self._hang:
                await asyncio.Event().wait()  # until cut or closed: cancelled then
            upstream_r, upstream_w = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
            self._writers.add(upstream_w)
            self.connections += 1
            await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(task)
            for writer in (client_w, upstream_w):
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()
