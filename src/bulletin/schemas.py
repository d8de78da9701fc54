"""The base of every request body: unknown fields and NUL characters are refused.

PostgreSQL cannot store a NUL character in text or JSON, and no legitimate message, name or
attribute contains one, so a body carrying one anywhere (however deeply nested) is a 422
rather than a database error.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f]+$"


def _find_nul(value: Any, depth: int = 0) -> bool:
    if depth > 64:
        return False
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_find_nul(k, depth + 1) or _find_nul(v, depth + 1) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_find_nul(v, depth + 1) for v in value)
    return False


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        if _find_nul(data):
            raise ValueError("text may not contain NUL (\\u0000) characters")
        return data
