"""The README is part of the product: its settings table and commands must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from typer.main import get_command

from bulletin.cli import app
from bulletin.config import Settings

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    table = README.split("## Settings", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(BULLETIN_[A-Z_]+)`", table))
    settings = {f"BULLETIN_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set(), "settings missing from the README"
    assert documented - settings == set(), "the README documents settings that do not exist"


def test_every_command_is_documented() -> None:
    group = get_command(app)
    names: set[str] = set()
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        sub = getattr(command, "commands", None)
        if sub:
            names.update(f"bulletin {name} {s}" for s in sub)
        else:
            names.add(f"bulletin {name}")
    for name in names:
        assert f"`{name}" in README, f"{name} is not in the README"


def test_the_two_commands_exist() -> None:
    root = Path(__file__).parent.parent
    for script in ("scripts/serve", "scripts/test"):
        assert f"./{script}" in README
        assert (root / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_every_test_the_provider_rules_name_exists() -> None:
    table = README.split("### Provider rules", 1)[1].split("\n#", 1)[0]
    tests = Path(__file__).parent
    named = set(re.findall(r"`([\w/]+\.py)(?:::(\w+))?`|`(test_\w+)`", table))
    assert named, "the Provider rules table names no test"
    sources = {path: path.read_text() for path in tests.rglob("test_*.py")}
    for file, function, bare in named:
        if file:
            path = tests / (file if "/" in file else f"conformance/{file}")
            assert path.is_file(), f"{file} named in Provider rules does not exist"
            assert not function or f"def {function}(" in sources[path], f"{file}::{function}"
        else:
            assert any(f"def {bare}(" in text for text in sources.values()), bare
