"""The base of every request body: unknown fields, NUL characters and unpaired surrogates
are refused.

PostgreSQL cannot store a NUL character in text or JSON, and no legitimate message, name or
attribute contains one. An unpaired surrogate (the JSON escape ``"\\ud800"`` alone) is not a
character at all: PostgreSQL refuses it and no answer can encode it. A body carrying either
anywhere, at any depth, is a 422 rather than a database error or an unreadable row.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f]+$"
# NUL, and the surrogate range, which only an unpaired "\udXXX" escape puts into a string:
# neither can be stored in PostgreSQL or encoded in an answer.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


# Where a value sits in a body: its parent's place and its own key or index (linked, so that
# a step costs the same at any depth).
_Place = tuple["_Place | None", str | int] | None


def _bad_text(value: Any) -> PydanticCustomError | None:
    """What is wrong with the first string in ``value`` that no database can store, if any.

    Walks the whole value, however deep, without recursion: a body as deep as the JSON parser
    allows is checked as fast as a flat one. Where the string is, is only worked out once one
    is found, so that the common case costs one look at each value.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item) is not None:
                break
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    else:
        return None
    text, place = _find_unstorable(value)
    kind, what = (
        ("text_nul", "NUL (\\u0000) characters")
        if "\x00" in text
        else ("text_surrogate", "unpaired surrogates (\\ud800 to \\udfff)")
    )
    message = f"text may not contain {what} (at {_spelled(place)})"
    return PydanticCustomError(kind, "{message}", {"message": message})


def _find_unstorable(value: Any) -> tuple[str, _Place]:
    stack: list[tuple[Any, _Place]] = [(value, None)]
    while stack:
        item, place = stack.pop()
        if isinstance(item, str):
            if _UNSTORABLE.search(item) is not None:
                return item, place
        elif isinstance(item, dict):
            for key, member in item.items():
                stack.append((key, place))
                stack.append((member, (place, str(key))))
        elif isinstance(item, list | tuple):
            stack.extend((member, (place, n)) for n, member in enumerate(item))
    raise AssertionError("called only when there is one")


def _spelled(place: _Place) -> str:
    parts: list[str] = []
    while place is not None:
        place, part = place
        parts.append(f"[{part}]" if isinstance(part, int) else f"[{part!r}]")
    if not parts:
        return "the top level"
    spelled = "".join(reversed(parts))
    return spelled if len(spelled) <= 200 else spelled[:200] + "..."


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        problem = _bad_text(data)
        if problem is not None:
            raise problem
        return data
