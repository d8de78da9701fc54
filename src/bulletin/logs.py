"""Structured logging: one event name per line, with bound ids, as JSON or for a console.

Ids bound with ``structlog.contextvars`` (the API's ``request_id``, a send's ``delivery_id``
and ``message_id``) appear on every line logged while they are bound. Records of the standard
library's loggers (uvicorn, SQLAlchemy, asyncio) go through the same renderer, so with
``json`` every line on stderr is one JSON object.
"""

from __future__ import annotations

import logging
import sys

import structlog


class _WithoutAlembicPreamble(logging.Filter):
    """Drops the two lines Alembic logs each time it looks at a database (which dialect, and
    whether DDL is transactional): ``/ready`` looks at each probe. Its migration steps stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Context impl ", "Will assume "))


def configure(level: str = "info", fmt: str = "console") -> None:
    """Set up structlog and the standard library's logging. Call once, from an entry point."""
    numeric = logging.getLevelName(level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    # The console renderer prints tracebacks itself; JSON needs them as a string field.
    finishing: list[structlog.typing.Processor] = (
        [structlog.processors.format_exc_info, renderer] if fmt == "json" else [renderer]
    )
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, *finishing],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    alembic = logging.getLogger("alembic.runtime.migration")
    if not any(isinstance(f, _WithoutAlembicPreamble) for f in alembic.filters):
        alembic.addFilter(_WithoutAlembicPreamble())
