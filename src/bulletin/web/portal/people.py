"""Portal pages for recipients: search, CSV import with a report per row, one person's page.

An import saves nothing until every row of the file is valid (the recipients service's rule):
a file half imported is harder to fix than one not imported at all.
"""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile

from bulletin.deliveries import repository as deliveries
from bulletin.errors import InvalidRequest
from bulletin.recipients import repository, service
from bulletin.recipients.endpoints import ExternalIdPath
from bulletin.services import Services
from bulletin.web.portal.render import PortalRoute, page
from bulletin.web.portal.security import CheckedPost, SignedInUser

log = structlog.get_logger("bulletin.portal")
router = APIRouter(prefix="/portal", route_class=PortalRoute, include_in_schema=False)

PAGE_SIZE = 50
MAX_ROWS = 10_000
MAX_BYTES = 5 * 1024 * 1024
#: Columns a file may have; ``groups`` holds names separated by ``;``.
COLUMNS = ("external_id", "name", "email", "phone", "whatsapp", "timezone", "locale", "groups")


def _svc(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/recipients")
async def list_recipients(
    request: Request,
    viewer: SignedInUser,
    q: Annotated[str, Query(max_length=200)] = "",
    group: Annotated[str, Query(max_length=100)] = "",
    page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> Response:
    async with _svc(request).db.read() as session:
        found = await repository.search(
            session,
            viewer.org_id,
            term=q.strip() or None,
            group=group or None,
            offset=(page_number - 1) * PAGE_SIZE,
            limit=PAGE_SIZE + 1,
        )
        more = len(found) > PAGE_SIZE
        found = found[:PAGE_SIZE]
        groups = await repository.groups_of(session, [r.id for r in found])
        all_groups = await repository.group_names(session, viewer.org_id)
    return page(
        "recipients.html",
        viewer=viewer,
        rows=[(r, groups.get(r.id, [])) for r in found],
        q=q,
        group=group,
        all_groups=all_groups,
        page_number=page_number,
        more=more,
    )


@router.get("/recipients/import")
async def import_form(viewer: SignedInUser) -> Response:
    return page("import.html", viewer=viewer, columns=COLUMNS, report=None, result=None)


class CsvProblem(ValueError):
    """The file as a whole cannot be read (encoding, header, size)."""


def read_csv(raw: bytes) -> list[dict[str, Any]]:
    """Rows of a recipients CSV as the batch import takes them; empty cells are left out."""
    if len(raw) > MAX_BYTES:
        raise CsvProblem(f"The file is larger than {MAX_BYTES // (1024 * 1024)} MB.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CsvProblem("The file is not UTF-8 text; save it as 'CSV UTF-8'.") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in reader.fieldnames or []]
    if "external_id" not in header:
        raise CsvProblem("The first line must name the columns, including external_id.")
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise CsvProblem(
            f"Unknown column(s): {', '.join(unknown)}. Columns are: {', '.join(COLUMNS)}."
        )
    reader.fieldnames = header
    rows: list[dict[str, Any]] = []
    for record in reader:
        if len(rows) >= MAX_ROWS:
            raise CsvProblem(f"The file has more than {MAX_ROWS} rows; split it.")
        row: dict[str, Any] = {}
        for key, value in record.items():
            if key is None or value is None or not str(value).strip():
                continue
            row[key] = str(value).strip()
        if "groups" in row:
            row["groups"] = [g.strip() for g in row["groups"].split(";") if g.strip()]
        rows.append(row)
    if not rows:
        raise CsvProblem("The file has no rows under its header.")
    return rows


def report_of(exc: InvalidRequest) -> list[dict[str, Any]]:
    """One line per problem: the file's line number (the header is line 1), column, problem."""
    lines = []
    for error in exc.errors:
        index = error.loc[2] if len(error.loc) > 2 else None
        column = error.loc[3] if len(error.loc) > 3 else ""
        line = index + 2 if isinstance(index, int) else None
        lines.append({"row": line, "column": str(column), "problem": error.message})
    return lines


def _unreadable(viewer: SignedInUser, problem: str) -> Response:
    """The import page again, with a problem of the whole file (400)."""
    report = [{"row": None, "column": "", "problem": problem}]
    return page("import.html", 400, viewer=viewer, columns=COLUMNS, result=None, report=report)


@router.post("/recipients/import")
async def import_csv(request: Request, posted: CheckedPost) -> Response:
    viewer = posted.viewer
    upload = posted.form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _unreadable(viewer, "Choose a CSV file to import.")
    try:
        rows = read_csv(await upload.read(MAX_BYTES + 1))
    except CsvProblem as exc:
        await posted.form.close()
        return _unreadable(viewer, str(exc))
    await posted.form.close()
    services = _svc(request)
    try:
        async with services.db.transaction() as session:
            result = await service.import_batch(
                session, viewer.org_id, rows, services.settings.default_phone_region
            )
    except InvalidRequest as exc:
        log.info("portal.import_rejected", org_id=str(viewer.org_id), rows=len(rows))
        return page(
            "import.html",
            422,
            viewer=viewer,
            columns=COLUMNS,
            result=None,
            report=report_of(exc),
            summary=exc.detail,
        )
    log.info(
        "portal.imported", org_id=str(viewer.org_id), created=result.created, updated=result.updated
    )
    return page("import.html", viewer=viewer, columns=COLUMNS, report=None, result=result)


@router.get("/recipients/{external_id}")
async def recipient(
    request: Request, viewer: SignedInUser, external_id: ExternalIdPath
) -> Response:
    async with _svc(request).db.read() as session:
        person = await service.get(session, viewer.org_id, external_id)
        preferences = await service.get_preferences(session, viewer.org_id, external_id)
        row = await repository.get(session, viewer.org_id, external_id)
        assert row is not None
        history = await deliveries.for_recipient(session, row.id, 100)
    return page(
        "recipient.html", viewer=viewer, person=person, preferences=preferences, history=history
    )
