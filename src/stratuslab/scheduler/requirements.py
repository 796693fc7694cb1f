"""Per-instance requirement expressions (the original ``--vm-requirements``), parsed safely.

The language is OpenNebula's ``SCHED_REQUIREMENTS``, small and explicit::

    expr       := and ("|" and)*
    and        := unary ("&" unary)*
    unary      := "!" unary | "(" expr ")" | comparison
    comparison := operand ("=" | "!=" | "<" | ">" | "<=" | ">=") operand
    operand    := ATTRIBUTE | LABEL:name | NUMBER | "string"

for example ``ARCH = "x86_64" & (FREE_MEMORY > 4096 | LABEL:gpu = "yes")``. A string with
``*`` compared with ``=`` or ``!=`` is a glob (``NAME = "rack1-*"``). A label that a host
does not have is unequal to everything and fails every ordering; a label compared with a
number is read as a number. Nothing is ever evaluated as Python: the text becomes a tree
of small closures, and every mistake is an :class:`~stratuslab.errors.InvalidInput` whose
message gives the 1-based position of the offending character.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from stratuslab.errors import InvalidInput
from stratuslab.scheduler.model import HostSnapshot

Value = str | float | None
Attributes = Mapping[str, Value]
Predicate = Callable[[Attributes], bool]

LABEL_PREFIX = "LABEL:"
#: attribute -> (is a number, changes as instances are placed)
ATTRIBUTES: dict[str, tuple[bool, bool]] = {
    "ID": (False, False),
    "NAME": (False, False),
    "HOSTNAME": (False, False),
    "STATE": (False, False),
    "ARCH": (False, False),
    "HYPERVISOR": (False, False),
    "VCPUS": (True, False),
    "MEMORY": (True, False),
    "DISK": (True, False),
    "FREE_CPU": (True, True),
    "FREE_MEMORY": (True, True),
    "FREE_DISK": (True, True),
    "USED_CPU": (True, True),
    "USED_MEMORY": (True, True),
    "USED_DISK": (True, True),
    "LOAD": (True, True),
}
DYNAMIC = frozenset(name for name, (_, dynamic) in ATTRIBUTES.items() if dynamic)
OPERATORS = ("=", "!=", "<", ">", "<=", ">=")

_HINT = (
    'write comparisons such as ARCH = "x86_64", FREE_MEMORY > 4096 or LABEL:gpu = "yes"; '
    "join them with & and |, group them with ( ), negate with !"
)
_TOKEN = re.compile(
    r"""(?P<num>-?\d+(?:\.\d+)?)
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*(?::[A-Za-z0-9_.\-/]*)?)
      | (?P<op>!=|==|>=|<=|=|<|>)
      | (?P<punct>&&|\|\||[()&|!])""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # num, str, ident, op, punct, end
    text: str
    pos: int  # 1-based


@dataclass(frozen=True)
class Requirement:
    """A parsed expression: call it with a host's attributes."""

    text: str
    predicate: Predicate
    #: the attributes it reads (labels as ``LABEL:name``)
    attributes: frozenset[str]

    @property
    def dynamic(self) -> bool:
        """Does it read free capacity or load (which change as instances are placed)?"""
        return not self.attributes.isdisjoint(DYNAMIC)

    def __call__(self, attributes: Attributes) -> bool:
        return self.predicate(attributes)

    def matches(self, host: HostSnapshot) -> bool:
        return self.predicate(host_attributes(host))


def host_attributes(host: HostSnapshot) -> dict[str, Value]:
    """Everything an expression can read about ``host``."""
    attrs: dict[str, Value] = {
        "ID": host.id,
        "NAME": host.name,
        "HOSTNAME": host.name,
        "STATE": host.state.value,
        "ARCH": host.arch,
        "HYPERVISOR": host.hypervisor,
        "VCPUS": float(host.vcpus),
        "MEMORY": float(host.memory_mib),
        "DISK": float(host.disk_gib),
        "FREE_CPU": host.free_vcpus,
        "FREE_MEMORY": host.free_memory_mib,
        "FREE_DISK": host.free_disk_gib,
        "USED_CPU": float(host.vcpus_used),
        "USED_MEMORY": float(host.memory_used_mib),
        "USED_DISK": float(host.disk_used_gib),
        "LOAD": host.load,
    }
    for key, value in host.labels.items():
        attrs[LABEL_PREFIX + key] = value
    return attrs


@functools.lru_cache(maxsize=1024)
def parse_requirements(text: str) -> Requirement | None:
    """Parse ``text``; None when it is empty. Raises InvalidInput pointing at the error."""
    if not text.strip():
        return None
    parser = _Parser(text)
    predicate = parser.parse()
    return Requirement(text=text, predicate=predicate, attributes=frozenset(parser.read))


def _error(text: str, message: str, pos: int) -> InvalidInput:
    return InvalidInput(
        f"requirement expression: {message} at position {pos}",
        hint=f"in {text!r}: {_HINT}",
        code="invalid_requirements",
        details={"position": pos, "expression": text},
    )


def _tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(text, i)
        if m is None:
            if text[i] in "\"'":
                raise _error(text, f"unterminated string starting with {text[i]}", i + 1)
            raise _error(text, f"unexpected character {text[i]!r}", i + 1)
        kind = m.lastgroup or ""
        tokens.append(Token(kind, m.group(), i + 1))
        i = m.end()
    tokens.append(Token("end", "", len(text) + 1))
    return tokens


@dataclass(frozen=True)
class _Operand:
    get: Callable[[Attributes], Value]
    #: "num", "str" (a text attribute or a string literal) or "label" (text, maybe numeric)
    kind: str
    literal: Value
    is_attribute: bool
    token: Token


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.read: set[str] = set()

    def parse(self) -> Predicate:
        pred = self._or()
        tok = self._peek()
        if tok.kind != "end":
            raise self._unexpected(tok)
        return pred

    # -- grammar -------------------------------------------------------------------------

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._peek().text in ("|", "||"):
            self.i += 1
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda a: any(p(a) for p in parts)

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._peek().text in ("&", "&&"):
            self.i += 1
            parts.append(self._unary())
        if len(parts) == 1:
            return parts[0]
        return lambda a: all(p(a) for p in parts)

    def _unary(self) -> Predicate:
        tok = self._peek()
        if tok.text == "!":
            self.i += 1
            inner = self._unary()
            return lambda a: not inner(a)
        if tok.text == "(":
            self.i += 1
            inner = self._or()
            close = self._peek()
            if close.text != ")":
                if close.kind == "end":
                    raise _error(
                        self.text,
                        f"expected ')' to close the '(' at {tok.pos}, found the end",
                        close.pos,
                    )
                raise self._unexpected(close)
            self.i += 1
            return inner
        return self._comparison()

    def _comparison(self) -> Predicate:
        left = self._operand()
        op = self._peek()
        if op.kind != "op":
            what = "the end" if op.kind == "end" else repr(op.text)
            raise _error(
                self.text,
                f"expected a comparison operator (=, !=, <, >, <=, >=) after "
                f"{left.token.text!r}, found {what}",
                op.pos,
            )
        self.i += 1
        right = self._operand()
        return _compare(self.text, left, "=" if op.text == "==" else op.text, right, op)

    def _operand(self) -> _Operand:
        tok = self._peek()
        self.i += 1
        if tok.kind == "num":
            value = float(tok.text)
            return _Operand(lambda _a: value, "num", value, False, tok)
        if tok.kind == "str":
            text = re.sub(r"\\(.)", r"\1", tok.text[1:-1])
            return _Operand(lambda _a: text, "str", text, False, tok)
        if tok.kind == "ident":
            return self._attribute(tok)
        self.i -= 1
        if tok.kind == "end":
            raise _error(self.text, "the expression ends where a value was expected", tok.pos)
        raise self._unexpected(tok)

    def _attribute(self, tok: Token) -> _Operand:
        if tok.text.upper().startswith(LABEL_PREFIX):
            key = tok.text[len(LABEL_PREFIX) :]
            if not key:
                raise _error(self.text, "a label name must follow 'LABEL:'", tok.pos)
            name = LABEL_PREFIX + key
            self.read.add(name)
            return _Operand(lambda a: a.get(name), "label", None, True, tok)
        name = tok.text.upper()
        if name not in ATTRIBUTES:
            known = ", ".join(ATTRIBUTES)
            raise InvalidInput(
                f"requirement expression: unknown host attribute {tok.text!r} "
                f"at position {tok.pos}",
                hint=f"known attributes: {known}, and LABEL:<name> for host labels",
                code="invalid_requirements",
                details={"position": tok.pos, "expression": self.text},
            )
        self.read.add(name)
        numeric = ATTRIBUTES[name][0]
        return _Operand(lambda a: a.get(name), "num" if numeric else "str", None, True, tok)

    def _peek(self) -> Token:
        return self.tokens[self.i]

    def _unexpected(self, tok: Token) -> InvalidInput:
        return _error(self.text, f"unexpected {tok.text!r}", tok.pos)


def _compare(text: str, left: _Operand, op: str, right: _Operand, op_tok: Token) -> Predicate:
    if not (left.is_attribute or right.is_attribute):
        raise _error(text, "a comparison needs a host attribute on one side", left.token.pos)
    kinds = {left.kind, right.kind}
    if kinds == {"num", "str"}:

        def kind(o: _Operand) -> str:
            return "a number" if o.kind == "num" else "text"

        raise _error(
            text,
            f"cannot compare {left.token.text} ({kind(left)}) with {right.token.text} "
            f"({kind(right)})",
            right.token.pos,
        )
    if op in ("<", ">", "<=", ">=") and "num" not in kinds:
        raise _error(text, f"{op!r} compares numbers; use = or != for text", op_tok.pos)
    if "num" in kinds:
        return _numeric(left.get, op, right.get)
    return _textual(left, op, right)


_ORDER: dict[str, Callable[[float, float], bool]] = {
    "=": lambda x, y: x == y,
    "!=": lambda x, y: x != y,
    "<": lambda x, y: x < y,
    ">": lambda x, y: x > y,
    "<=": lambda x, y: x <= y,
    ">=": lambda x, y: x >= y,
}


def _number(value: Value) -> float | None:
    if value is None or isinstance(value, float):
        return value
    try:
        return float(value)
    except ValueError:
        return None


def _numeric(
    left: Callable[[Attributes], Value], op: str, right: Callable[[Attributes], Value]
) -> Predicate:
    test = _ORDER[op]

    def predicate(a: Attributes) -> bool:
        x, y = _number(left(a)), _number(right(a))
        if x is None or y is None:
            return op == "!="
        return test(x, y)

    return predicate


def _textual(left: _Operand, op: str, right: _Operand) -> Predicate:
    glob = next(
        (o for o in (left, right) if not o.is_attribute and "*" in str(o.literal)),
        None,
    )
    if glob is not None:
        other = right if glob is left else left
        pattern = str(glob.literal)

        def equal(a: Attributes) -> bool:
            value = other.get(a)
            return value is not None and fnmatchcase(str(value), pattern)

    else:

        def equal(a: Attributes) -> bool:
            x, y = left.get(a), right.get(a)
            return x is not None and y is not None and x == y

    if op == "=":
        return equal
    return lambda a: not equal(a)
