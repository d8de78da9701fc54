"""The habits of docs/architecture.md that the import contract cannot see, read from the source.

The package layers and the absence of import cycles are checked by ``lint-imports`` (the
``[tool.importlinter]`` contracts in pyproject.toml). These tests read each module's syntax
tree for the rest: every query lives in a repository module, only the database module
commits, and a module over 400 lines says in its docstring why it is that long.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "bulletin"

#: Modules where queries belong besides every ``repository.py``, and why.
QUERY_MODULES = {
    # The deliveries package's repository, split by concept (the claim protocol, fallback, the
    # audience, the suppression list): each is a repository module of that package.
    "deliveries/audience.py",
    "deliveries/queue.py",
    "deliveries/fallback.py",
    "deliveries/suppressions.py",
    # Infrastructure, not a domain's data: the engine and its transactions, the migration
    # lock, the wake-up NOTIFY, the liveness probe's SELECT 1.
    "db.py",
    "migrate.py",
    "signals.py",
    "api/health.py",
}

#: What builds SQL: SQLAlchemy's statement constructors, and raw text.
SQL_NAMES = {"select", "insert", "update", "delete", "text", "exists", "union_all", "values"}
#: What runs SQL or loads rows, when called on a session or a connection.
QUERY_CALLS = {"execute", "scalar", "scalars", "get", "stream", "delete", "merge", "refresh"}
SESSION_NAMES = {"session", "conn", "connection"}


def modules() -> Iterator[tuple[str, ast.Module, str]]:
    for path in sorted(SOURCE.rglob("*.py")):
        name = path.relative_to(SOURCE).as_posix()
        if not name.startswith("migrations/"):
            text = path.read_text()
            yield name, ast.parse(text), text


def queries_in(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            found += [f"imports {a.name}" for a in node.names if a.name in SQL_NAMES]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in SESSION_NAMES
            and node.func.attr in QUERY_CALLS
        ):
            found.append(f"line {node.lineno}: {node.func.value.id}.{node.func.attr}()")
    return found


def is_query_module(name: str) -> bool:
    # models.py may write SQL text too: server defaults and partial-index predicates are schema.
    return name.endswith(("repository.py", "models.py")) or name in QUERY_MODULES


def test_every_query_lives_in_a_repository_module() -> None:
    outside = {
        name: queries_in(tree)
        for name, tree, _ in modules()
        if not is_query_module(name) and queries_in(tree)
    }
    assert outside == {}


def test_the_rule_sees_a_query_written_in_a_service() -> None:
    service = ast.parse(
        "from sqlalchemy import select\n"
        "async def names(session):\n"
        "    return await session.scalars(select(Recipient.name))\n"
    )
    assert queries_in(service) == ["imports select", "line 3: session.scalars()"]
    assert not is_query_module("recipients/service.py")
    assert is_query_module("recipients/repository.py")


def test_only_the_database_module_commits() -> None:
    # Services flush and never commit: the entry point's transaction (bulletin.db) commits,
    # so that a request's or a batch's changes land together or not at all.
    committing = sorted(
        f"{name}:{node.lineno}"
        for name, tree, _ in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "commit"
    )
    assert committing == [c for c in committing if c.split(":")[0] in {"db.py", "signals.py"}]
    assert committing  # the rule reads real code: db.py does commit


def test_a_long_module_says_why_it_is_long() -> None:
    unexplained = []
    for name, tree, text in modules():
        lines = text.count("\n")
        docstring = ast.get_docstring(tree) or ""
        if lines > 400 and not re.search(r"400 lines,? because", docstring):
            unexplained.append(f"{name} ({lines} lines)")
    assert unexplained == []
