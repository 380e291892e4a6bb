"""YAML text for the projection documents, byte for byte what PyYAML writes, several times faster.

PyYAML builds a node per scalar and resolves each one's tag in Python (twice): that was
most of a replay's time. These documents are plain trees of dicts, lists and scalars, so
the block layout is written here, and each distinct scalar is rendered once by PyYAML
itself and remembered. A document this writer cannot lay out exactly as PyYAML would (a
long scalar that PyYAML folds, a list directly inside a list, an odd key) is handed to
yaml.dump whole: the text is the same either way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import yaml

# libyaml's emitter (CSafeDumper) when present; both are safe dumpers with the same output.
DUMPER: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
WIDTH = 100
# Distinct scalars remembered; past this the memo starts over (memory stays bounded).
_MEMO_MAX = 200_000


class _Unsupported(Exception):
    """This document needs PyYAML's own layout."""


def dump_yaml(doc: dict[str, Any]) -> str:
    """Render a mapping in block style, keys in their order (as yaml.dump with sort_keys=False)."""
    return yaml.dump(doc, Dumper=DUMPER, sort_keys=False, allow_unicode=True,
                     default_flow_style=False, width=WIDTH)


_values: dict[tuple[type, Any], str | None] = {}
_keys: dict[str, str | None] = {}
# Simple strings already written: the resolver's regexes run once per distinct string
# (a third of a render), and the live projector writes the same job's strings every flush.
_strs: dict[str, str] = {}
_STRS_MAX = 100_000


# Strings PyYAML writes plain (or, when they read as another type, single-quoted) with no
# analysis beyond its resolver: no indicator, quote, '#', ':' or space at either end, no
# ": " inside, no line break, ASCII only.
_SIMPLE = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./+-]*(?:[: ][A-Za-z0-9_./+-]+)*")
# Resolver.resolve has no annotations in types-PyYAML's view; typed here.
_resolve = cast(Callable[[type, str, tuple[bool, bool]], str],
                yaml.resolver.Resolver().resolve)
_STR_TAG = "tag:yaml.org,2002:str"


def _simple_str(value: str) -> str | None:
    """A simple string's YAML, or None when PyYAML must be asked."""
    if not _SIMPLE.fullmatch(value) or ": " in value:
        return None
    if _resolve(yaml.ScalarNode, value, (True, False)) == _STR_TAG:
        return value
    return f"'{value}'"  # reads as a number, a date, a bool...: quoted to stay a string


def _scalar(value: Any) -> str | None:
    """One line of YAML for a scalar value as PyYAML writes it, or None if it is more."""
    kind = type(value)
    if kind is str:
        line = _strs.get(value)
        if line is not None:
            return line
        line = _simple_str(value)
        if line is not None:
            if len(_strs) >= _STRS_MAX:
                _strs.clear()
            _strs[value] = line
            return line
    elif kind is int:
        return str(value)
    key = (kind, value)
    try:
        return _values[key]
    except KeyError:
        pass
    except TypeError:  # not hashable: not a scalar
        return None
    text = dump_yaml({"k": value})
    line = text[3:-1] if text.startswith("k: ") and text.count("\n") == 1 else None
    if len(_values) >= _MEMO_MAX:
        _values.clear()
    _values[key] = line
    return line


def _key(name: Any) -> str:
    if type(name) is not str:
        raise _Unsupported
    text = _keys.get(name)
    if text is None:
        if name in _keys:
            raise _Unsupported
        rendered = dump_yaml({name: 0})
        text = rendered[:-4] if rendered.endswith(": 0\n") and rendered.count("\n") == 1 \
            else None
        if len(_keys) >= _MEMO_MAX:
            _keys.clear()
        _keys[name] = text
        if text is None:
            raise _Unsupported
    return text


def _line(prefix: str, value: Any) -> str:
    """`prefix` followed by a scalar, checked to fit where PyYAML would not fold it."""
    text = _scalar(value)
    if text is None or len(prefix) + len(text) > WIDTH:
        raise _Unsupported
    return prefix + text


def _mapping(doc: dict[Any, Any], indent: str, out: list[str], first: str | None,
             ordered: bool) -> None:
    """Write a non-empty mapping; `first` is the prefix of its first line (after "- ").

    Keys come in the mapping's order when `ordered`, else sorted (nested mappings).
    """
    inner = indent + "  "
    for name in doc if ordered else sorted(doc):
        value = doc[name]
        if first is None:
            head = indent + (_keys.get(name) or _key(name)) + ":"
        else:
            head = first + (_keys.get(name) or _key(name)) + ":"
            first = None
        kind = type(value)
        if kind is dict:
            if value:
                out.append(head + "\n")
                _mapping(value, inner, out, None, False)
            else:
                out.append(head + " {}\n")
        elif kind is list:
            if value:
                out.append(head + "\n")
                _sequence(value, indent, out)  # PyYAML does not indent a list in a mapping
            else:
                out.append(head + " []\n")
        else:
            out.append(_line(head + " ", value) + "\n")


def _sequence(items: list[Any], indent: str, out: list[str]) -> None:
    inner, dash = indent + "  ", indent + "- "
    for item in items:
        kind = type(item)
        if kind is dict:
            if item:
                _mapping(item, inner, out, dash, False)
            else:
                out.append(dash + "{}\n")
        elif kind is list:
            if item:
                raise _Unsupported
            out.append(dash + "[]\n")
        else:
            out.append(_line(dash, item) + "\n")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def render_mapping(doc: dict[str, Any]) -> str:
    """The YAML text of a mapping, its own keys in order and every nested mapping's sorted:
    the same as dump_yaml with nested keys sorted first."""
    if not doc:
        return dump_yaml({})
    out: list[str] = []
    try:
        _mapping(doc, "", out, None, True)
    except (_Unsupported, TypeError):  # TypeError: keys that cannot be sorted together
        return dump_yaml({k: _sorted(v) for k, v in doc.items()})
    return "".join(out)
