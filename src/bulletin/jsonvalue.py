"""Limits on free-form JSON: what a tenant may store in a field such as ``attributes``.

A free-form field is stored as JSON (JSONB on PostgreSQL, JSON text on SQLite), read back on
every listing and rendered into templates for every recipient. Anything accepted must
therefore be storable on both databases, cheap to read back, and equal to what was sent when
it is read back. :func:`check` enforces that, before anything is written:

- nesting: at most :data:`MAX_DEPTH` levels (the field's own object is level 1);
- width: at most :data:`MAX_OBJECT_KEYS` keys per object, :data:`MAX_ARRAY_ITEMS` items per
  array;
- text: keys of at most :data:`MAX_KEY_CHARACTERS` characters with no control characters,
  strings of at most :data:`MAX_STRING_CHARACTERS` characters with no control characters
  other than tab, line feed and carriage return, and no unpaired surrogates (``"\\ud800"``
  escapes decode to text that no database can store and no answer can encode);
- numbers: finite (``NaN``, ``Infinity`` and ``-Infinity`` are not JSON, although Python's
  parser reads them), integers within ±(2^53 - 1), the range every JSON reader keeps exact;
- size: at most :data:`MAX_FIELD_BYTES` bytes as compact UTF-8 JSON.

The walk is iterative and stops at the first broken rule, so a hostile value costs at most
a bounded amount of work whatever its shape. Before any of that, :func:`too_deep` measures a
whole request body's nesting on its bytes (at most :data:`MAX_BODY_DEPTH` levels), so that no
recursive parser ever sees one deep enough to fail.

:func:`as_read` undoes the one change PostgreSQL makes to an accepted value: JSONB prints a
number without its exponent, so a float such as ``1e+300`` comes back as a 301-digit integer.
No accepted integer is that large, so such an integer is turned back into the float it was.
"""

from __future__ import annotations

import json
import math
import operator
import re
from itertools import accumulate, repeat
from typing import Any

#: Levels of nesting; the field's own object or array is level 1.
MAX_DEPTH = 32
#: Keys in one object.
MAX_OBJECT_KEYS = 256
#: Items in one array.
MAX_ARRAY_ITEMS = 1_000
#: Characters in one key.
MAX_KEY_CHARACTERS = 128
#: Characters in one string value.
MAX_STRING_CHARACTERS = 10_000
#: Bytes of the whole field as compact UTF-8 JSON.
MAX_FIELD_BYTES = 65_536
#: Largest integer magnitude: 2^53 - 1, beyond which JavaScript and many JSON readers round.
MAX_SAFE_INTEGER = 2**53 - 1
#: Levels of nesting of a whole request body, checked before it is parsed. A legitimate body
#: needs a few levels more than :data:`MAX_DEPTH`; anything far deeper is refused before a
#: recursive parser can reach Python's recursion limit (about 900 levels, then a 500).
MAX_BODY_DEPTH = 512

# Control characters refused in strings (tab, line feed and carriage return are text), and
# the surrogate range, which only an unpaired "\udXXX" escape can put into a Python string.
_BAD_IN_STRING = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_BAD_IN_KEY = re.compile("[\x00-\x1f\ud800-\udfff]")
# A JSON string, escapes included; possessive, and running to the end when it is not closed,
# so that the scan below is linear whatever the bytes are.
_STRING_BYTES = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Openers become 2 and closers 0, so that "byte - 1" is the step in depth.
_DEPTH_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_SCAN_CHUNK = 65_536
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
# Bytes every value takes at least, as compact JSON, besides the text of its strings.
_LEAST_BYTES = {type(None): 4, bool: 4, int: 1, float: 1, str: 2, dict: 2, list: 2}


class JsonLimitError(ValueError):
    """A free-form value breaks one of the limits above.

    ``kind`` names the limit (``json_depth``, ``json_keys`` ...), ``path`` says where in the
    value (``attributes.site[2]``), ``message`` is the sentence for the API caller.
    """

    def __init__(self, kind: str, path: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.path = path
        self.message = message


def _error(kind: str, path: str, message: str) -> JsonLimitError:
    """The error, with ``{path}`` in ``message`` spelled out, shortened if it is very long."""
    shown = path if len(path) <= 160 else f"{path[:120]}...{path[-37:]}"
    return JsonLimitError(kind, path, message.format(path=shown))


def _step(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}"
    shown = key if len(key) <= 40 else key[:40] + "..."
    # json.dumps escapes whatever the key holds, so the path is always printable.
    return f"{path}[{json.dumps(shown)}]"


def _text_error(text: str, path: str, field: str, *, is_key: bool) -> JsonLimitError | None:
    found = (_BAD_IN_KEY if is_key else _BAD_IN_STRING).search(text)
    if found is None:
        return None
    what = "a key" if is_key else "a string"
    if found.group() >= "\ud800":
        return _error(
            "json_surrogate",
            path,
            f"{{path}}: {what} in {field} contains an unpaired surrogate "
            f"(\\u{ord(found.group()):04x}); only whole characters can be stored",
        )
    allowed = "" if is_key else " other than tab, line feed and carriage return"
    return _error(
        "json_control_character",
        path,
        f"{{path}}: {what} in {field} contains the control character "
        f"\\u{ord(found.group()):04x}; control characters{allowed} are refused",
    )


def check(value: object, field: str) -> None:
    """Raise :class:`JsonLimitError` for the first limit ``value`` breaks; ``field`` names it."""
    least = 0  # never more than the compact JSON size, to stop early on huge values
    stack: list[tuple[object, str, int]] = [(value, field, 1)]
    while stack:
        item, path, depth = stack.pop()
        kind = type(item)
        least += _LEAST_BYTES.get(kind, 0)
        if isinstance(item, dict | list) and depth > MAX_DEPTH:
            raise _error(
                "json_depth", path, f"{field} nested deeper than {MAX_DEPTH} levels (at {{path}})"
            )
        if isinstance(item, dict):
            if len(item) > MAX_OBJECT_KEYS:
                raise _error(
                    "json_keys",
                    path,
                    f"{{path}}: an object in {field} has {len(item)} keys; "
                    f"at most {MAX_OBJECT_KEYS} per object",
                )
            least += max(len(item) - 1, 0)  # commas
            for key, member in item.items():
                if not isinstance(key, str):
                    raise _error("json_type", path, "{path}: keys must be strings")
                if len(key) > MAX_KEY_CHARACTERS:
                    raise _error(
                        "json_key_length",
                        path,
                        f"{{path}}: a key in {field} is longer than {MAX_KEY_CHARACTERS} "
                        "characters",
                    )
                error = _text_error(key, path, field, is_key=True)
                if error is not None:
                    raise error
                least += len(key) + 3  # quotes and colon
                stack.append((member, _step(path, key), depth + 1))
        elif isinstance(item, list):
            if len(item) > MAX_ARRAY_ITEMS:
                raise _error(
                    "json_items",
                    path,
                    f"{{path}}: an array in {field} has {len(item)} items; "
                    f"at most {MAX_ARRAY_ITEMS} per array",
                )
            least += max(len(item) - 1, 0)  # commas
            stack.extend((member, _step(path, n), depth + 1) for n, member in enumerate(item))
        elif isinstance(item, str):
            if len(item) > MAX_STRING_CHARACTERS:
                raise _error(
                    "json_string_length",
                    path,
                    f"{{path}}: a string in {field} is longer than "
                    f"{MAX_STRING_CHARACTERS} characters",
                )
            error = _text_error(item, path, field, is_key=False)
            if error is not None:
                raise error
            least += len(item)
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _error(
                    "json_integer_range",
                    path,
                    f"{{path}}: integers in {field} must lie within ±{MAX_SAFE_INTEGER} "
                    "(2^53 - 1), where every JSON reader keeps them exact; "
                    "send larger ones as strings",
                )
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise _error(
                    "json_not_finite",
                    path,
                    f"{{path}}: {field} may not contain NaN, Infinity or -Infinity "
                    "(they are not JSON numbers)",
                )
        else:
            raise _error("json_type", path, f"{{path}}: {type(item).__name__} is not a JSON value")
        if least > MAX_FIELD_BYTES:
            raise _too_large(field)
    if len(compact(value).encode()) > MAX_FIELD_BYTES:
        raise _too_large(field)


def _too_large(field: str) -> JsonLimitError:
    return JsonLimitError(
        "json_size", field, f"{field} is larger than {MAX_FIELD_BYTES} bytes as JSON"
    )


def compact(value: object) -> str:
    """``value`` as compact JSON text, as it is measured against :data:`MAX_FIELD_BYTES`."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def too_deep(raw: bytes, limit: int = MAX_BODY_DEPTH) -> bool:
    """Whether the JSON text ``raw`` nests arrays and objects more than ``limit`` levels deep.

    Works on the bytes, before any parser: brackets inside strings do not count. Linear in the
    length of ``raw``, and stops at the first level past ``limit``. Text that is not JSON gets
    an answer too; its parser will refuse it anyway.
    """
    steps = _STRING_BYTES.sub(b"", raw).translate(_DEPTH_STEPS, _NOT_BRACKETS)
    if steps.count(2) <= limit:
        return False
    depth = 0
    for start in range(0, len(steps), _SCAN_CHUNK):
        chunk = steps[start : start + _SCAN_CHUNK]
        # Depths after each step of this chunk; byte - 1 is +1 for an opener, -1 for a closer.
        depths = list(accumulate(map(operator.sub, chunk, repeat(1)), initial=depth))
        if max(depths) > limit:
            return True
        depth = depths[-1]
    return False


def as_read(value: Any) -> Any:
    """A stored value as it was accepted: integers beyond the accepted range were floats.

    The value is only rebuilt when it holds such an integer; the search for one does not
    recurse, so a value stored before these limits existed is looked at safely.
    """
    if not _has_large_integer(value):
        return value
    return json.loads(compact(value), parse_int=_parse_int)


def _parse_int(text: str) -> int | float:
    number = int(text)
    return float(number) if abs(number) > MAX_SAFE_INTEGER else number


def _has_large_integer(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_SAFE_INTEGER:
            return True
    return False
