"""Filters on the photo metadata (:mod:`regatt_sdk.photometa`): ``--where "folder=trips/2024"``.

A filter is ``FIELD OP VALUE`` with ``OP`` one of ``= != >= <= > <``; several filters all apply
(AND). Fields:

* ``folder`` (``=``, ``!=``): the photo is in that folder or below it; ``trips/2024`` matches
  ``photos/trips/2024`` and ``photos/trips/2024/day1`` (whole path parts, anywhere in the path);
* ``camera`` (``=``, ``!=``): EXIF make and model, case-insensitive, whole text;
* ``date`` (EXIF date taken) and ``mtime`` (file modification time, UTC): ``YYYY-MM-DD`` or
  ``YYYY-MM-DDTHH:MM[:SS]``; a day alone means the whole day (``date<=2024-01-31`` keeps the
  31st, ``date=2024-01-31`` is that day);
* ``width``, ``height``, ``size`` (bytes): integers.

A photo without the field (no EXIF date) never matches. An unknown field, an operator a field
does not take, or a malformed value is a :class:`FilterError` naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from .errors import RegattError

FIELDS = ("folder", "camera", "date", "mtime", "width", "height", "size")
_TEXT = ("folder", "camera")
_TIME = ("date", "mtime")
_OPS = ("!=", ">=", "<=", "=", ">", "<")
_RE = re.compile(r"^\s*([A-Za-z_]+)\s*(!=|>=|<=|=|>|<)\s*(.*?)\s*$")


class FilterError(RegattError):
    """A filter that cannot be understood (unknown field, wrong operator, malformed value)."""


@dataclass(frozen=True)
class Filter:
    """One condition: ``field``, ``op``, ``value`` (a text, an int, or ``(start, end)`` ISO
    times: ``[start, end)`` for a day, ``start == end`` for an instant)."""

    field: str
    op: str
    value: object
    text: str

    def test(self, rec: Mapping) -> bool:
        """Does a metadata record satisfy this condition?"""
        v = _field_value(rec, self.field)
        if v is None:
            return False
        if self.field == "folder":
            hit = _under(str(v), str(self.value))
            return hit if self.op == "=" else not hit
        if self.field == "camera":
            hit = str(v).casefold() == str(self.value).casefold()
            return hit if self.op == "=" else not hit
        if self.field in _TIME:
            start, end = self.value  # type: ignore[misc]
            instant = start == end
            return {
                "=": (v == start) if instant else (start <= v < end),
                "!=": (v != start) if instant else not (start <= v < end),
                ">=": v >= start,
                ">": (v > start) if instant else v >= end,
                "<": v < start,
                "<=": (v <= start) if instant else v < end,
            }[self.op]
        return {"=": v == self.value, "!=": v != self.value, ">=": v >= self.value, "<=": v <= self.value,
                ">": v > self.value, "<": v < self.value}[self.op]  # fmt: skip


def _under(folder: str, want: str) -> bool:
    want = want.strip("/")
    return f"/{want}/" in f"/{folder.strip('/')}/" if want else True


def _field_value(rec: Mapping, field: str) -> object:
    if field == "mtime":
        ns = rec.get("mtime_ns")
        if not isinstance(ns, int) or ns < 0:
            return None
        return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    v = rec.get(field)
    if field in ("width", "height", "size") and (not isinstance(v, int) or v < 0):
        return None
    return v


def _time_range(text: str, where: str) -> tuple[str, str]:
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = dt.date.fromisoformat(text)
            nxt = day + dt.timedelta(days=1)
            return f"{day.isoformat()}T00:00:00", f"{nxt.isoformat()}T00:00:00"
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2})?", text):
            t = dt.datetime.fromisoformat(text.replace(" ", "T")).strftime("%Y-%m-%dT%H:%M:%S")
            return t, t
    except ValueError:
        pass
    raise FilterError(f"{text!r} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SS) in filter {where!r}")


def parse_filter(text: str) -> Filter:
    """``"date>=2024-01-01"`` -> :class:`Filter` (see the module docstring)."""
    m = _RE.match(text)
    if not m:
        raise FilterError(f"filter {text!r} is not FIELD OP VALUE (OP one of {' '.join(_OPS)}), e.g. folder=trips/2024")
    field, op, value = m.group(1).lower(), m.group(2), m.group(3)
    if field not in FIELDS:
        raise FilterError(f"unknown field {field!r} in filter {text!r}: use {', '.join(FIELDS)}")
    if field in _TEXT:
        if op not in ("=", "!="):
            raise FilterError(f"{field} takes = or != only, not {op} (filter {text!r})")
        return Filter(field, op, value, text)
    if field in _TIME:
        return Filter(field, op, _time_range(value, text), text)
    try:
        return Filter(field, op, int(value), text)
    except ValueError:
        raise FilterError(f"{field} takes a whole number, not {value!r} (filter {text!r})") from None


def parse_filters(filters: str | Iterable[str] | Mapping[str, object] | None) -> list[Filter]:
    """Filters from a string, a list of strings, or a mapping ``{field: value}`` (equality)."""
    if not filters:
        return []
    if isinstance(filters, str):
        filters = [filters]
    elif isinstance(filters, Mapping):
        filters = [f"{k}={v}" for k, v in filters.items()]
    return [f if isinstance(f, Filter) else parse_filter(str(f)) for f in filters]


def filter_mask(store, filters) -> np.ndarray:
    """``(N,)`` bool: the store's rows that every filter keeps (rows without metadata: none)."""
    from .photometa import read_meta

    parsed = parse_filters(filters)
    recs = read_meta(store)
    if parsed and not recs and store.count:
        raise FilterError(
            f"{store.path} has no photo metadata to filter on: bring it in step with  regatt sync MODEL SOURCES... -o STORE"
        )
    keep = np.zeros(store.count, bool)
    for row, rec in enumerate(recs[: store.count]):
        keep[row] = all(f.test(rec) for f in parsed)
    return keep


def sql_where(filters, column: str = "meta") -> tuple[str, list]:
    """``(SQL condition, parameters)`` of the filters on a jsonb ``column`` (pgvector tables)."""
    parts, params = [], []
    for f in parse_filters(filters):
        if f.field == "folder":
            cond = f"('/' || trim(both '/' from {column}->>'folder') || '/') LIKE %s"
            params.append("%/" + _like(str(f.value).strip("/")) + "/%")
            parts.append(cond if f.op == "=" else f"NOT {cond} AND {column} ? 'folder'")
        elif f.field == "camera":
            cond = f"lower({column}->>'camera') = lower(%s)"
            params.append(f.value)
            parts.append(cond if f.op == "=" else f"NOT {cond}")
        elif f.field in _TIME:
            expr = (
                f"({column}->>'date')"
                if f.field == "date"
                else f"to_char(to_timestamp(({column}->>'mtime_ns')::numeric / 1e9) AT TIME ZONE 'UTC', "
                "'YYYY-MM-DD\"T\"HH24:MI:SS')"
            )
            start, end = f.value  # type: ignore[misc]
            if start == end:
                parts.append(f"{expr} {f.op.replace('!=', '<>')} %s")
                params.append(start)
            else:
                sql = {"=": (f"{expr} >= %s AND {expr} < %s", [start, end]),
                       "!=": (f"NOT ({expr} >= %s AND {expr} < %s)", [start, end]),
                       ">=": (f"{expr} >= %s", [start]), ">": (f"{expr} >= %s", [end]),
                       "<": (f"{expr} < %s", [start]), "<=": (f"{expr} < %s", [end])}[f.op]  # fmt: skip
                parts.append(sql[0])
                params.extend(sql[1])
        else:
            parts.append(
                f"({column}->>'{f.field}')::bigint {f.op.replace('!=', '<>')} %s AND ({column}->>'{f.field}')::bigint >= 0"
            )
            params.append(f.value)
    return " AND ".join(f"({p})" for p in parts) or "TRUE", params


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
