"""Merging people described inline (by events) into an organization's recipients.

Apart from :mod:`bulletin.recipients.repository` because the statement differs by database:
on PostgreSQL rows lock, so one statement per chunk takes people in a fixed order; on SQLite
there is one writer at a time, and rows are grouped by the columns they give instead.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import uuid
from collections import defaultdict
from typing import Any

from sqlalchemy import TextClause, Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from bulletin.db import UTCDateTime, chunked, dialect_name
from bulletin.recipients.repository import PROFILE_COLUMNS

_ROWS_PER_STATEMENT = 1000

# Create recipients, or change only the profile columns each row gives, rows read from a JSON
# parameter. A deactivated recipient is left exactly as it is, and still returned, so that the
# caller learns it is deactivated. A WhatsApp number that is null, or absent for a new
# recipient, is the phone of the row.
#
# PostgreSQL: one statement per chunk, whatever columns the rows give (each row's keys are read
# back from the payload, by external id), rows taken in external id order so that concurrent
# merges lock the people they share in the same order and cannot deadlock.
_MERGE_SET = ", ".join(
    f"CASE WHEN recipients.active AND jsonb_exists(g.fields, '{c}') "
    f"THEN excluded.{c} ELSE recipients.{c} END"
    for c in PROFILE_COLUMNS
)
_MERGE_PG = text(
    f"""
    WITH given AS MATERIALIZED (
        SELECT jsonb_object_agg(r ->> 'external_id', r) AS rows
        FROM jsonb_array_elements(CAST(:payload AS jsonb)) AS r)
    INSERT INTO recipients (org_id, external_id, name, email, phone, whatsapp, timezone, locale,
                            attributes, categories, active, created_at, updated_at)
    SELECT :org, v.external_id, v.name, v.email, v.phone, COALESCE(v.whatsapp, v.phone),
           v.timezone, v.locale, COALESCE(v.attributes, '{{}}'::jsonb), '{{}}'::jsonb, true,
           :now, :now
    FROM jsonb_to_recordset(CAST(:payload AS jsonb)) AS v(
        external_id text, name text, email text, phone text, whatsapp text, timezone text,
        locale text, attributes jsonb)
    ORDER BY v.external_id
    ON CONFLICT (org_id, external_id) DO UPDATE
    SET ({", ".join(PROFILE_COLUMNS)}, updated_at) = (
        SELECT {_MERGE_SET},
               CASE WHEN recipients.active AND g.fields - 'external_id' <> '{{}}'::jsonb
                    THEN excluded.updated_at ELSE recipients.updated_at END
        FROM (SELECT rows -> excluded.external_id AS fields FROM given) AS g)
    RETURNING id, external_id, active
    """  # noqa: S608 (the interpolations are fixed column lists)
).bindparams(bindparam("org", type_=Uuid()), bindparam("now", type_=UTCDateTime()))
# SQLite (one writer at a time: no lock order to keep): one statement per chunk of the rows
# that give the same columns, made for that set of columns (names from PROFILE_COLUMNS only).
_MERGE_SQLITE = """
    INSERT INTO recipients (org_id, external_id, name, email, phone, whatsapp, timezone, locale,
                            attributes, categories, active, created_at, updated_at)
    SELECT :org, json_extract(value, '$.external_id'), json_extract(value, '$.name'),
           json_extract(value, '$.email'), json_extract(value, '$.phone'),
           COALESCE(json_extract(value, '$.whatsapp'), json_extract(value, '$.phone')),
           json_extract(value, '$.timezone'), json_extract(value, '$.locale'),
           COALESCE(json_extract(value, '$.attributes'), '{{}}'), '{{}}', 1, :now, :now
    FROM json_each(:payload) WHERE true
    ON CONFLICT (org_id, external_id) DO UPDATE
    SET {assignments}
    RETURNING id, external_id, active
"""


@functools.cache
def _merge_sqlite(columns: tuple[str, ...]) -> TextClause:
    assignments = ", ".join(
        f"{c} = CASE WHEN recipients.active THEN excluded.{c} ELSE recipients.{c} END"
        for c in (*columns, "updated_at")
        if columns
    )
    return text(
        _MERGE_SQLITE.format(assignments=assignments or "updated_at = recipients.updated_at")
    ).bindparams(bindparam("org", type_=Uuid()), bindparam("now", type_=UTCDateTime()))


async def merge(
    session: AsyncSession, org_id: uuid.UUID, rows: list[dict[str, Any]], now: dt.datetime
) -> dict[str, tuple[int, bool]]:
    """Create recipients, or change the profile columns each row gives of existing ones.

    Each row holds ``external_id`` and any of :data:`PROFILE_COLUMNS` (values as stored: a
    normalized phone, ``attributes`` a dict); the columns a row leaves out are kept, or empty
    for a new recipient. A ``whatsapp`` that is ``None``, or absent for a new recipient, is the
    row's ``phone``. New recipients are active; a deactivated one is neither reactivated nor
    changed. A row naming an external id again adds to (and overrides) what the earlier one
    gave. One statement per :data:`_ROWS_PER_STATEMENT` rows (on SQLite, of rows giving the
    same columns). Returns, by external id, each recipient's internal id and whether it is
    active.
    """
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        unknown = set(row) - {"external_id", *PROFILE_COLUMNS}
        if unknown:
            raise ValueError(f"not recipient profile columns: {sorted(unknown)}")
        merged.setdefault(row["external_id"], {}).update(row)
    groups: dict[TextClause, list[dict[str, Any]]] = defaultdict(list)
    for external_id in sorted(merged):
        row = merged[external_id]
        if dialect_name(session) == "sqlite":
            groups[_merge_sqlite(tuple(c for c in PROFILE_COLUMNS if c in row))].append(row)
        else:
            groups[_MERGE_PG].append(row)
    found: dict[str, tuple[int, bool]] = {}
    for statement, group in groups.items():
        for part in chunked(group, _ROWS_PER_STATEMENT):
            parameters = {"org": org_id, "now": now, "payload": json.dumps(part)}
            for row_id, external_id, active in await session.execute(statement, parameters):
                found[external_id] = (row_id, bool(active))
    return found
