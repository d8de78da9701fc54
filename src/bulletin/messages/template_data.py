"""``data`` as message templates see it: an event's data, read-only and lenient.

An object of the data is a read-only mapping where ``data.name`` is always the key ``name``
(``data.items`` is an event's items, not a method of mappings; ``data | items`` or ``dictsort``
give the pairs); an array is a tuple. A key the data does not have, a null, or an index past
the end of an array reads as a :class:`_Missing` value: it renders as empty text, iterates as
nothing, works with ``default`` and ``is defined``, and any key or attribute of it is missing
too, so ``data.order.id`` is empty text when there is no ``order``. Used where empty text
cannot stand in for it (a calculation, a comparison, a call) it fails the render with
:class:`MissingData`, which names its place (``data.order.total``).

Read-only matters: a message's data is converted once and shared by the renders of all its
recipients, so no render may change what the next one sees.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import jinja2

from bulletin import jsonvalue
from bulletin.messages.sandbox import MAX_VALUE, BoundedEnvironment, BudgetExceeded, TemplateFailed


class MissingData(TemplateFailed):
    """A template used a value ``data`` does not have (or has as null) where empty text cannot
    stand in for it: in a calculation, a comparison or a call."""


class MissingDataError(jinja2.UndefinedError):
    """Raised inside a render where a :class:`_Missing` value is used as something more."""


# Where a value sits in ``data``: its parent's place and its own key or index (linked, so that
# a step costs the same at any depth); ``None`` is ``data`` itself.
_Place = tuple["_Place", str | int] | None


def _path(place: _Place) -> str:
    steps: list[str | int] = []
    while place is not None:
        place, step = place
        steps.append(step)
    text = "data"
    for step in reversed(steps):
        if isinstance(step, str) and step.isidentifier():
            text += f".{step}"
        else:
            text += f"[{json.dumps(step, ensure_ascii=False)}]"
    return text


class _Missing(jinja2.ChainableUndefined):
    """A value ``data`` does not have: empty text, with no keys, items or attributes of its
    own; an error naming its place where it is used as something more."""

    __slots__ = ()

    def __init__(self, place: _Place) -> None:
        super().__init__(obj=place, exc=MissingDataError)

    @property
    def _undefined_message(self) -> str:
        return (
            f"{_path(self._undefined_obj)} is not in the data (or is null): it can be shown, "
            "as empty text, but not calculated with, compared or called"
        )

    # Numeric protocols Jinja2's undefined leaves to Python (a TypeError that says nothing of
    # where): they fail like the others, naming the place.
    __round__ = __index__ = __abs__ = __trunc__ = __floor__ = __ceil__ = (
        jinja2.ChainableUndefined._fail_with_undefined_error
    )

    def __format__(self, spec: str) -> str:
        try:
            return format("", spec)
        except ValueError:
            self._fail_with_undefined_error()

    def __repr__(self) -> str:
        return "None"  # inside a printed object or array, where it was null


class _Data(Mapping[str, Any]):
    """An object of ``data``: read-only; a key it does not have reads as :class:`_Missing`."""

    __slots__ = ("_place", "_values")

    def __init__(self, values: dict[str, Any], place: _Place) -> None:
        self._values = values
        self._place = place

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except (KeyError, TypeError):
            return _Missing((self._place, key))

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        return self._values.get(key, default)

    def __repr__(self) -> str:
        return repr(self._values)


class _Items(tuple[Any, ...]):
    """An array of ``data``: read-only; an index past its end reads as :class:`_Missing`."""

    _place: _Place

    def __new__(cls, items: list[Any], place: _Place) -> _Items:
        made = super().__new__(cls, items)
        made._place = place
        return made

    def __getitem__(self, index: Any) -> Any:
        try:
            return super().__getitem__(index)
        except IndexError:
            return _Missing((self._place, index))

    def __repr__(self) -> str:
        return repr(list(self))


def template_data(data: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """``data`` as templates see it (``None``: empty); raises :class:`TemplateFailed` when it
    is nested deeper than :data:`bulletin.jsonvalue.MAX_DEPTH` levels, which nothing accepted
    can be."""
    if data is None:
        return _Data({}, None)
    frozen = _freeze(jsonvalue.as_read(dict(data)), None, 1)
    assert isinstance(frozen, _Data)
    return frozen


def _freeze(value: Any, place: _Place, depth: int) -> Any:
    if isinstance(value, dict | list) and depth > jsonvalue.MAX_DEPTH:
        raise TemplateFailed(f"the data is nested more than {jsonvalue.MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        return _Data({k: _freeze(v, (place, k), depth + 1) for k, v in value.items()}, place)
    if isinstance(value, list):
        return _Items([_freeze(v, (place, i), depth + 1) for i, v in enumerate(value)], place)
    if value is None:
        return _Missing(place)
    return value


def _plain(value: Any) -> Any:
    """What ``tojson`` writes for the values of ``data`` JSON has no type for."""
    if isinstance(value, _Data):
        return dict(value)
    if isinstance(value, jinja2.Undefined):
        return None
    raise TypeError(f"a {type(value).__name__} cannot be written as JSON")


def _indented_size(value: Any, width: int) -> int:
    """At least how many characters of indentation ``json.dumps(value, indent=width)`` writes,
    counted until it passes :data:`~bulletin.messages.sandbox.MAX_VALUE`."""
    total = 0
    stack = [(value, 0)]
    while stack and total <= MAX_VALUE:
        item, depth = stack.pop()
        total += depth * width
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
    return total


def _dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps``, refusing an indentation that would make the text larger than any value
    may be before it is written (the filter's result is only measured once it exists)."""
    indent = kwargs.get("indent")
    if indent is not None:
        width = indent if isinstance(indent, int) else len(str(indent))
        if _indented_size(value, max(width, 0)) > MAX_VALUE:
            raise BudgetExceeded(f"indented JSON would be larger than {MAX_VALUE} characters")
    return json.dumps(value, **kwargs)


class DataEnvironment(BoundedEnvironment):
    """The sandbox, where ``data.name`` is always the key ``name`` of the data (``data.items``
    is an event's items, not a method of mappings), and ``tojson`` writes the data as JSON,
    within the size a value may have."""

    def __init__(self, *, html: bool) -> None:
        super().__init__(html=html)
        self.policies["json.dumps_function"] = _dumps
        self.policies["json.dumps_kwargs"] = {"sort_keys": True, "default": _plain}

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is _Data:
            return obj[attribute]
        return super().getattr(obj, attribute)
