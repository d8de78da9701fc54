"""The Jinja2 sandbox message templates run in, with a budget for the work one render may do.

Jinja2's own sandbox refuses access to Python internals, but not work: a loop, a ``~``
concatenation or a filter is not intercepted, so a template could loop for seconds or build a
value of gigabytes. Here every render gets a :class:`Budget`, and a template that would exceed it
stops with :class:`BudgetExceeded` (a :class:`TemplateFailed`) before doing the work:

- at most :data:`MAX_ITERATIONS` loop iterations and macro calls in all;
- no value (text, list, mapping, measured deeply) larger than :data:`MAX_VALUE`, checked
  *before* an operation that would build it (``*``, ``+``, ``%``, ``~``, ``center``, ``join``,
  ``replace``, ``format`` ...), and at most :data:`MAX_WRITTEN` characters of text written in
  all, counting text of macros and ``set`` blocks;
- at most :data:`MAX_WORK` in all of the sizes of the values passed to and returned by
  functions, filters and operators;
- integers of at most :data:`MAX_INT_BITS` bits, calls nested at most :data:`MAX_DEPTH` deep;
- and, as a backstop, :data:`DEADLINE` seconds of processor time.

How: the parsed template is rewritten before it is compiled. Every ``for`` loop iterates
through a counter, every ``~`` goes through a size check, and every text written by the
template is counted. Calls, filters and the operators that can make large values are checked
by :class:`BoundedEnvironment`. The budget of the render in progress is kept in a context
variable, so concurrent renders never share one.

It is over 400 lines because every check of the sandbox guards the same render budget: split
apart, a reader could no longer see that no path through a template escapes it.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import re
import string
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.runtime import LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import Namespace, _PassArg
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

#: Loop iterations and macro calls one render may make in all.
MAX_ITERATIONS = 10_000
#: Largest value (characters of a text; items plus their content for a list or mapping).
MAX_VALUE = 262_144
#: Characters one render may write in all, including text it later discards.
MAX_WRITTEN = 262_144
#: Size of all the values one render may pass to or get from functions, filters and operators,
#: in all: what bounds the work of a loop whose every step handles a large value.
MAX_WORK = 4_194_304
#: Largest integer a template may compute, in bits.
MAX_INT_BITS = 4_096
#: Deepest nesting of calls (macros calling macros, recursive loops).
MAX_DEPTH = 32
#: Seconds of processor time one render may take; the budgets above keep real renders far
#: below it. Processor time of the rendering thread, not wall-clock time, so that a busy machine
#: (the process waiting for a core) never fails a render that does little work.
DEADLINE = 0.05


class TemplateFailed(ValueError):
    """A template could not be compiled or rendered; the message says why, for people."""


class BudgetExceeded(TemplateFailed):
    """A render would have done more work than its :class:`Budget` allows."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the template exceeded its rendering budget: {what}")


class Budget:
    """What one render has used so far; see the module docstring for the limits."""

    __slots__ = ("deadline", "depth", "events", "iterations", "worked", "written")

    def __init__(self) -> None:
        self.deadline: float | None = None
        self.events = 0
        self.iterations = 0
        self.written = 0
        self.worked = 0
        self.depth = 0

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > MAX_ITERATIONS:
            raise BudgetExceeded(f"more than {MAX_ITERATIONS} loop iterations and macro calls")
        self.check_time()

    def write(self, characters: int) -> None:
        self.written += characters
        if self.written > MAX_WRITTEN:
            raise BudgetExceeded(f"more than {MAX_WRITTEN} characters of text written")

    def work(self, size: int) -> None:
        self.worked += size
        if self.worked > MAX_WORK:
            raise BudgetExceeded(f"more than {MAX_WORK} characters of values handled")
        self.check_time()

    def check_time(self) -> None:
        # Reading the thread's processor time is a system call: read it every so many steps
        # (each step is bounded by the size limits), and start the clock at the first reading,
        # so that a render too small to reach it never pays for one.
        self.events += 1
        if self.events % _STEPS_BETWEEN_CLOCK_READINGS:
            return
        now = time.thread_time()
        if self.deadline is None:
            self.deadline = now + DEADLINE
        elif now > self.deadline:
            raise BudgetExceeded(f"it took longer than {DEADLINE * 1000:.0f} ms")


_STEPS_BETWEEN_CLOCK_READINGS = 64
_current: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "bulletin_render_budget", default=None
)


class budget:  # used like a function: ``with budget():``
    """Run the renders inside with one budget; inside another ``budget()``, share that one."""

    __slots__ = ("_token",)

    def __init__(self) -> None:
        self._token: contextvars.Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        active = _current.get()
        if active is not None:
            return active
        fresh = Budget()
        self._token = _current.set(fresh)
        return fresh

    def __exit__(self, *_exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None


def _active() -> Budget | None:
    return _current.get()


# --- measuring -------------------------------------------------------------------------------


#: What one item of a list or mapping adds to a value's size, besides the item itself.
ITEM_SIZE = 8


def measure(value: Any, limit: int = MAX_VALUE) -> int:
    """The size of ``value``, counted until it passes ``limit``.

    A text counts its characters; a list, tuple, set or mapping :data:`ITEM_SIZE` per item plus
    the size of each item, so a list holding the same long text many times is as large as its
    text form, and measuring stops after a bounded number of items.
    """
    if type(value) is str:  # the common case, first
        return len(value)
    total = 0
    stack = [value]
    while stack:
        item = stack.pop()
        # By type, not isinstance(): a namespace answers isinstance() slowly.
        kind = type(item)
        if issubclass(kind, str):
            total += len(item)
        elif issubclass(kind, list | tuple | set | frozenset):
            total += ITEM_SIZE * (1 + len(item))
            if total > limit:
                break
            stack.extend(item)
        elif issubclass(kind, Mapping):
            total += ITEM_SIZE * (1 + 2 * len(item))
            if total > limit:
                break
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is Namespace:
            total += ITEM_SIZE
            stack.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif kind is int:
            total += ITEM_SIZE + item.bit_length() // 8
        else:
            total += ITEM_SIZE
        if total > limit:
            break
    return total


def _refuse_larger(size: int, what: str) -> None:
    if size > MAX_VALUE:
        raise BudgetExceeded(f"{what} would be larger than {MAX_VALUE} characters")


def _charge(size: int) -> None:
    active = _active()
    if active is not None:
        active.work(size)


def _check_value(value: Any) -> Any:
    size = measure(value)
    _refuse_larger(size, "a value")
    _charge(size)
    return value


def _check_args(args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    total = 0
    for value in (*args, *kwargs.values()):
        size = measure(value)
        _refuse_larger(size, "an argument")
        total += size
    _charge(total)


def _check_bits(bits: int) -> None:
    if bits > MAX_INT_BITS:
        raise BudgetExceeded(f"a number would be larger than {MAX_INT_BITS} bits")


def _largest(values: Iterable[Any]) -> int:
    return max((measure(v) for v in values), default=0)


_PERCENT_FIELD = re.compile(r"%(?:\([^)]*\))?[#0 +\-]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.)")


def _check_percent(template: str, values: Any) -> None:
    """Refuse ``template % values`` when the result could pass :data:`MAX_VALUE`."""
    items = list(values.values()) if isinstance(values, Mapping) else values
    items = list(items) if isinstance(items, tuple | list) else [items]
    widest = _largest(items)
    bound = len(template)
    for match in _PERCENT_FIELD.finditer(template):
        if match.group(3) == "%":
            continue
        bound += widest
        for number in match.group(1, 2):
            if number == "*":
                bound += sum(abs(v) for v in items if isinstance(v, int))
            elif number:
                bound += int(number)
        if bound > MAX_VALUE:
            break
    _refuse_larger(bound, "a formatted text")


def _check_braces(template: str, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``template.format(...)`` when the result could pass :data:`MAX_VALUE`."""
    widest = _largest((*args, *kwargs.values()))
    bound = len(template)
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError:
        return  # the call itself reports the malformed format
    for _literal, name, spec, _conversion in fields:
        if name is None:
            continue
        if spec and "{" in spec:
            raise BudgetExceeded("a format field may not take its width from an argument")
        bound += widest + sum(int(n) for n in re.findall(r"\d+", spec or ""))
        if bound > MAX_VALUE:
            break
    _refuse_larger(bound, "a formatted text")


def _check_replace(text: str, old: Any, new: Any, count: Any) -> None:
    if not isinstance(old, str) or not isinstance(new, str):
        return
    found = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    _refuse_larger(len(text) + found * max(len(new) - len(old), 0), "a replaced text")


def _materialize(items: Any) -> list[Any]:
    """The items of ``items`` as a list, refusing (before it is built) one larger than a value
    may be; consuming a generator counts as loop iterations, and stops at the limit."""
    if isinstance(items, str | list | tuple):
        return list(items)
    listed = []
    size = ITEM_SIZE
    active = _active()
    for item in items:
        if active is not None:
            active.tick()
        size += ITEM_SIZE + measure(item)
        _refuse_larger(size, "a list")
        listed.append(item)
    return listed


def _bounded(values: Iterable[Any]) -> list[Any]:
    """``values``, with every iterator among them (a ``map`` or ``select`` result) turned into
    a list within the size limit, so that no filter or function builds a larger one."""
    return [
        _materialize(v) if isinstance(v, Iterator) and not isinstance(v, LoopContext) else v
        for v in values
    ]


def _check_join(separator: str, items: list[Any]) -> None:
    size = max(len(items) - 1, 0) * len(separator)
    for item in items:
        size += measure(item)
        if size > MAX_VALUE:
            break
    _refuse_larger(size, "a joined text")


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Check a call of ``text.<name>``; returns the arguments to call it with."""
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if isinstance(width, int):
            _refuse_larger(width, "a padded text")
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int):
            _refuse_larger(len(text) + text.count("\t") * max(size, 0), "an expanded text")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"))
    elif name == "join" and args:
        items = _materialize(args[0])
        _check_join(text, items)
        return (items, *args[1:])
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = _largest(args[0].values())
        _refuse_larger(len(text) * max(longest, 1), "a translated text")
    return args


# --- the rewritten template ------------------------------------------------------------------


# The rewritten template calls these as filters (direct calls, unlike calls of functions, which
# the sandbox intercepts), under names no template can spell. Each takes the context, so that
# Jinja2 never evaluates one while compiling.
_LOOP, _CONCAT, _WRITTEN = "budget:loop", "budget:concat", "budget:written"


def _iterations(iterable: Any) -> Iterator[Any]:
    active = _active()
    for item in iterable:
        if active is not None:
            active.tick()
        yield item


@jinja2.pass_context
def count_iterations(_context: jinja2.runtime.Context, iterable: Any) -> Iterator[Any]:
    """``iterable``, charging one iteration of the budget per item."""
    return _iterations(iterable)


@jinja2.pass_context
def checked_concat(context: jinja2.runtime.Context, *parts: Any) -> str:
    """``a ~ b ~ ...``, refused before it is built when it would be too large."""
    size = 0
    for part in parts:
        size += measure(part)
        if size > MAX_VALUE:
            break
    _refuse_larger(size, "a joined text")
    _charge(size)
    joined: str = (markup_join if context.eval_ctx.autoescape else str_join)(parts)
    return joined


@jinja2.pass_context
def charge_written(_context: jinja2.runtime.Context, characters: int) -> None:
    """Charge template text (not ``{{ }}`` output, which :func:`finalize` counts)."""
    active = _active()
    if active is not None:
        active.write(characters)


def finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` value before it becomes text: refused when too large, and counted."""
    if type(value) is str:
        size = len(value)
    else:
        size = measure(value)
        _refuse_larger(size, "a value")
    active = _active()
    if active is not None:
        active.write(size)
    return value


def _guard(name: str, value: nodes.Node, *args: nodes.Node, lineno: int) -> nodes.Filter:
    guard = nodes.Filter(value, name, list(args), [], None, None)
    guard.set_lineno(lineno)
    return guard


class _Rewrite(NodeTransformer):
    """Route loops, ``~`` and written text through the budget."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _guard(_LOOP, node.iter, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        first, *rest = node.nodes
        return _guard(_CONCAT, first, *rest, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> list[nodes.Node]:
        self.generic_visit(node)
        text = sum(len(n.data) for n in node.nodes if isinstance(n, nodes.TemplateData))
        if not text:
            return [node]
        charge = _guard(_WRITTEN, nodes.Const(text), lineno=node.lineno)
        return [nodes.ExprStmt(charge).set_lineno(node.lineno), node]


# --- the environment -------------------------------------------------------------------------


def bounded_range(*args: int) -> range:
    """``range``, refusing more numbers than the loop budget could ever iterate."""
    numbers = range(*args)
    if len(numbers) > MAX_ITERATIONS:
        raise BudgetExceeded(f"a range of more than {MAX_ITERATIONS} numbers")
    return numbers


#: Types whose values are already within the size limit wherever a template meets them: texts
#: come from the template's source, a person's data (both limited) or a checked operation.
_SCALARS = frozenset({str, Markup, int, float, bool, type(None)})
#: Filters that can make a value much larger than their arguments; checked before they run.
_GROWING = frozenset(
    {"center", "indent", "format", "replace", "join", "wordwrap", "batch", "slice"}
)


def _bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    passes = 1 if _PassArg.from_obj(func) is not None else 0
    growing = name in _GROWING

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if not (growing or kwargs) and all(type(a) in _SCALARS for a in args[passes:]):
            # The common case (``upper``, ``default``, ``length`` of a text), kept cheap.
            return _check_value(func(*args))
        given, (value, *rest) = args[:passes], _bounded(args[passes:])
        kwargs = dict(zip(kwargs, _bounded(kwargs.values()), strict=True))
        _check_args((value, *rest), kwargs)
        if name == "center" and rest:
            _check_str_method(str(value), "center", tuple(rest), {})
        elif name == "indent":
            width = rest[0] if rest else kwargs.get("width", 4)
            lines = str(value).count("\n") + 1
            pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            _refuse_larger(len(str(value)) + lines * pad, "an indented text")
        elif name == "format":
            _check_percent(str(value), kwargs or tuple(rest))
        elif name == "replace" and len(rest) >= 2:
            _check_replace(str(value), rest[0], rest[1], rest[2] if len(rest) > 2 else None)
        elif name == "join":
            value = _materialize(value)
            separator = rest[0] if rest else kwargs.get("d", "")
            _check_join(str(separator), value)
        elif name == "wordwrap":
            wrap = rest[3] if len(rest) > 3 else kwargs.get("wrapstring") or "\n"
            _refuse_larger((len(str(value)) + 1) * (1 + len(str(wrap))), "a wrapped text")
        elif name in ("batch", "slice"):
            count = rest[0] if rest else kwargs.get("linecount", kwargs.get("slices", 0))
            if isinstance(count, int) and count > MAX_ITERATIONS:
                raise BudgetExceeded(f"{name} into more than {MAX_ITERATIONS} parts")
        active = _active()
        if active is not None:
            active.check_time()
        return _check_value(func(*given, value, *rest, **kwargs))

    return checked


class BoundedEnvironment(SandboxedEnvironment):
    """A sandbox whose calls, filters and operators stay within the render's budget."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *, html: bool) -> None:
        super().__init__(
            undefined=jinja2.StrictUndefined,
            autoescape=html,
            keep_trailing_newline=True,
            auto_reload=False,
            finalize=finalize,
        )
        self.globals["range"] = bounded_range
        self.globals.pop("lipsum", None)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(
            {_LOOP: count_iterations, _CONCAT: checked_concat, _WRITTEN: charge_written}
        )

    def call_binop(
        self, context: jinja2.runtime.Context, operator_: str, left: Any, right: Any
    ) -> Any:
        if operator_ == "**":
            if isinstance(right, int | float) and abs(right) > 100:
                raise BudgetExceeded("an exponent larger than 100")
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                _check_bits(left.bit_length() * right)
            return operator.pow(left, right)
        if operator_ == "*":
            for sequence, count in ((left, right), (right, left)):
                if isinstance(sequence, str | list | tuple) and isinstance(count, int):
                    size = measure(sequence) * max(count, 0)
                    _refuse_larger(size, "a repeated value")
                    _charge(size)
            if isinstance(left, int) and isinstance(right, int):
                _check_bits(left.bit_length() + right.bit_length())
            return operator.mul(left, right)
        if operator_ == "%":
            if isinstance(left, str):
                _check_percent(left, right)
                return _check_value(operator.mod(left, right))
            return operator.mod(left, right)
        if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
            size = measure(left) + measure(right)
            _refuse_larger(size, "a joined value")
            _charge(size)
        result = operator.add(left, right)
        if isinstance(result, int):
            _check_bits(result.bit_length())
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        template: str = value.__self__
        is_map = value.__name__ == "format_map"

        @functools.wraps(wrapper)
        def checked(*args: Any, **kwargs: Any) -> str:
            if is_map and args and isinstance(args[0], Mapping):
                _check_braces(template, (), args[0])
            else:
                _check_braces(template, args, kwargs)
            return wrapper(*args, **kwargs)

        return checked

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        active = _active()
        if isinstance(obj, Macro | LoopContext):
            if active is not None:
                active.tick()
            if isinstance(obj, LoopContext) and args:
                args = (_iterations(args[0]), *args[1:])
        else:
            args = tuple(_bounded(args))
            # Inside loops and blocks the compiled code passes its variables along for context
            # functions; they are not arguments of the call.
            own = {k: v for k, v in kwargs.items() if k not in ("_loop_vars", "_block_vars")}
            if own:
                kwargs = kwargs | dict(zip(own, _bounded(own.values()), strict=True))
            _check_args(args, own)
            owner = getattr(obj, "__self__", None)
            if isinstance(owner, str):
                args = _check_str_method(owner, getattr(obj, "__name__", ""), args, own)
        if active is None:
            return _check_value(super().call(context, obj, *args, **kwargs))
        active.check_time()
        active.depth += 1
        try:
            if active.depth > MAX_DEPTH:
                raise BudgetExceeded(f"calls nested more than {MAX_DEPTH} deep")
            return _check_value(super().call(context, obj, *args, **kwargs))
        finally:
            active.depth -= 1

    def compile_bounded(self, source: str) -> jinja2.Template:
        """``source`` compiled with every loop, ``~`` and written text under the budget."""
        tree = self.parse(source)
        rewritten = _Rewrite().visit(tree)
        rewritten.set_environment(self)
        code = self.compile(rewritten)
        return self.template_class.from_code(self, code, self.make_globals(None), None)
