"""The runs of a state snapshot as columns: one JSON array per field, not one per run.

A million-event log folds into a hundred thousand runs or more, and decoding them as one
JSON array each (twenty values apiece, the same job ids, states and checkpoints spelled
out again and again) was most of a start-up. As columns, a field of DICTIONARY_FIELDS
whose values mostly repeat is stored as its distinct values plus a 16-bit code per run
(base64); every other column is a plain array, which the decoder reads several times
faster than rows.

A decoded run holds containers of its own (the runner hands a run's checkpoint to an
engine), as a run decoded row by row did: a value shared through the dictionary is
copied for each run.
"""

from __future__ import annotations

import array
import base64
import binascii
import copy
import operator
import sys
from collections.abc import Sequence
from typing import Any

from core.state import RUN_FIELDS

# Fields with few distinct values in a long log: each distinct value is written once.
DICTIONARY_FIELDS = frozenset({
    "job_id", "state", "trigger", "kind", "checkpoint", "error", "interrupted_reason",
    "resumes", "warnings", "warning_samples", "params"})
# A dictionary column's codes: unsigned 16-bit, so a chunk holds at most this many runs.
CODE_TYPE = "H"
MAX_ROWS = 65_535


def _key(value: Any) -> Any:
    """A hashable key that tells apart values JSON tells apart (1, 1.0 and True too)."""
    if isinstance(value, (dict, list, tuple)):
        # repr spells every JSON type apart, nested too, and is twice as fast as dumps.
        return (type(value), repr(value))
    return (type(value), value)


def _dictionary(column: list[Any]) -> tuple[list[Any], list[int]] | None:
    """The column's distinct values and each run's code, or None if few repeat."""
    codes_of: dict[Any, int] = {}
    values: list[Any] = []
    codes: list[int] = []
    for value in column:
        key = _key(value)
        code = codes_of.get(key)
        if code is None:
            if len(values) > len(column) // 2:
                return None  # mostly distinct (a checkpoint per run): plain is smaller
            code = codes_of[key] = len(values)
            values.append(value)
        codes.append(code)
    return values, codes


def _pack(codes: list[int]) -> str:
    """Codes as base64 of unsigned 16-bit little-endian numbers."""
    packed = array.array(CODE_TYPE, codes)
    if sys.byteorder == "big":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def _unpack(text: str) -> array.array[int]:
    """The codes _pack wrote; ValueError if the text is not such codes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as err:
        raise ValueError(f"codes are not base64 ({err})") from err
    packed = array.array(CODE_TYPE)
    packed.frombytes(raw)  # ValueError for an odd number of bytes
    if sys.byteorder == "big":
        packed.byteswap()
    return packed


def encode(rows: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """At most MAX_ROWS runs given as RUN_FIELDS tuples, as columns for json.dumps."""
    if len(rows) > MAX_ROWS:
        raise ValueError(f"a chunk holds at most {MAX_ROWS} runs")
    columns: dict[str, Any] = {}
    for index, name in enumerate(RUN_FIELDS):
        column = [row[index] for row in rows]
        found = _dictionary(column) if name in DICTIONARY_FIELDS else None
        if found is None:
            columns[name] = column
        else:
            columns[name] = {"values": found[0], "codes": _pack(found[1])}
    return {"rows": len(rows), "columns": columns}


def _pick(values: list[Any], codes: array.array[int]) -> list[Any]:
    """values[code] for each code (IndexError for a code past the end)."""
    if len(codes) < 2:
        return [values[code] for code in codes]
    return list(operator.itemgetter(*codes)(values))


def _nested(value: Any) -> bool:
    """Whether a container holds containers (a plain copy would share them)."""
    items = value.values() if isinstance(value, dict) else value
    return any(isinstance(item, (dict, list)) for item in items)


def _copies(values: list[Any], codes: array.array[int]) -> list[Any]:
    """Each run's own copy of its shared value (cheaply when all are flat dicts or lists)."""
    picked = _pick(values, codes)
    kinds = {type(value) for value in values}
    if len(kinds) == 1 and kinds <= {dict, list} and not any(map(_nested, values)):
        return list(map(kinds.pop(), picked))
    return [copy.deepcopy(value) for value in picked]


def _column(name: str, stored: Any, rows: int) -> list[Any]:
    """One field's value for each run; ValueError if the column is not well formed."""
    if isinstance(stored, list):
        column = stored
    elif isinstance(stored, dict) and isinstance(stored.get("values"), list) and \
            isinstance(stored.get("codes"), str):
        values = stored["values"]
        codes = _unpack(stored["codes"])
        if any(isinstance(value, (dict, list)) for value in values):
            column = _copies(values, codes)
        else:
            column = _pick(values, codes)
    else:
        raise ValueError(f"column {name} is neither values nor a dictionary of them")
    if len(column) != rows:
        raise ValueError(f"column {name} holds {len(column)} values for {rows} runs")
    return column


def decode(chunk: Any) -> list[list[Any]]:
    """An encoded chunk's columns, in RUN_FIELDS order; ValueError if it is malformed."""
    if not isinstance(chunk, dict) or not isinstance(chunk.get("columns"), dict) or \
            type(chunk.get("rows")) is not int:
        raise ValueError("a chunk of runs is not columns")
    stored = chunk["columns"]
    if set(stored) != set(RUN_FIELDS):
        raise ValueError("a chunk of runs has other fields than a run")
    return [_column(name, stored[name], chunk["rows"]) for name in RUN_FIELDS]
