"""Reading the Host document from untyped JSON or YAML values, and its timestamps.

Every reader names the path of the offending field in its error, and timestamps
are written back the way bootc (chrono) writes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from pybootc.errors import BootcError

JsonDict = dict[str, Any]
_T = TypeVar("_T")
_E = TypeVar("_E", bound=StrEnum)


_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)


def _format_utc(m: datetime, nanos: int) -> str:
    # chrono prints no fraction, or 3, 6 or 9 digits: the fewest that lose nothing.
    if nanos == 0:
        fraction = ""
    elif nanos % 1_000_000 == 0:
        fraction = f".{nanos // 1_000_000:03d}"
    elif nanos % 1_000 == 0:
        fraction = f".{nanos // 1_000:06d}"
    else:
        fraction = f".{nanos:09d}"
    date = f"{m.year:04d}-{m.month:02d}-{m.day:02d}"
    return f"{date}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}{fraction}Z"


def normalize_timestamp(value: str | datetime) -> str:
    """`value` as bootc serializes a timestamp: RFC 3339 in UTC, `Z`, 0/3/6/9 fraction digits.

    Nanoseconds survive (a datetime would cut them to microseconds). A naive datetime is
    taken as UTC. Raises BootcError for text that is not an RFC 3339 date-time.
    """
    if isinstance(value, datetime):
        utc = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)).astimezone(UTC)
        return _format_utc(utc, utc.microsecond * 1000)
    found = _RFC3339.fullmatch(value)
    if found is None:
        raise BootcError(f'Invalid timestamp "{value}": expected an RFC 3339 date-time')
    year, month, day, hour, minute, second, digits, offset = found.groups()
    try:
        zone = UTC
        if offset not in ("Z", "z"):
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            zone = timezone(-delta if offset[0] == "-" else delta)
        ymd = int(year), int(month), int(day)
        moment = datetime(*ymd, int(hour), int(minute), int(second), tzinfo=zone)
        utc = moment.astimezone(UTC)
    except (ValueError, OverflowError) as err:
        raise BootcError(f'Invalid timestamp "{value}": {err}') from None
    return _format_utc(utc, int((digits or "0")[:9].ljust(9, "0")))


# ---------------------------------------------------------------------------------------
# Reading untyped JSON/YAML values, naming the path of the offending field in every error.


def kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


class Fields:
    """One JSON object being read; `where` is its path in the document."""

    def __init__(self, data: object, where: str) -> None:
        if not isinstance(data, Mapping):
            problem = f"expected an object, found {kind_of(data)}"
            raise self.fail(where or "document", problem)
        self.data: Mapping[str, Any] = data
        self.where = where

    @staticmethod
    def fail(where: str, problem: str) -> BootcError:
        return BootcError(f"Invalid host document: {where}: {problem}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, check: Callable[[object, str], _T], default: _T) -> _T:
        """The value of `key` through `check`, or `default` when absent or null."""
        value = self.data.get(key)
        return default if value is None else check(value, self.path(key))

    def required(self, key: str, check: Callable[[object, str], _T]) -> _T:
        if key not in self.data:
            raise self.fail(self.where or "document", f'missing field "{key}"')
        return check(self.data[key], self.path(key))


def read_string(value: object, where: str) -> str:
    # Unquoted YAML reads `version: 20231230` as a number; serde_yaml, knowing the field
    # is a string, takes it as one, and so do we. Booleans are not taken.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Fields.fail(where, f"expected a string, found {kind_of(value)}")
    return value


def read_boolean(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise Fields.fail(where, f"expected a boolean, found {kind_of(value)}")
    return value


def read_uint32(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise Fields.fail(where, f"expected an unsigned 32-bit integer, found {value!r}")
    return value


def read_timestamp(value: object, where: str) -> str:
    if not isinstance(value, str | datetime):
        raise Fields.fail(where, f"expected a date-time string, found {kind_of(value)}")
    try:
        return normalize_timestamp(value)
    except BootcError as err:
        raise Fields.fail(where, err.message) from None


def read_variant(enum: type[_E]) -> Callable[[object, str], _E]:
    def check(value: object, where: str) -> _E:
        try:
            return enum(read_string(value, where))
        except ValueError:
            expected = ", ".join(f'"{v.value}"' for v in enum)
            problem = f'unknown variant "{value}", expected one of {expected}'
            raise Fields.fail(where, problem) from None

    return check


def read_string_map(value: object, where: str) -> tuple[tuple[str, str], ...]:
    data = Fields(value, where).data
    return tuple(sorted((str(k), read_string(v, f"{where}.{k}")) for k, v in data.items()))


class Dumpable(Protocol):
    def to_json_dict(self) -> JsonDict: ...


def dump_optional(value: Dumpable | None) -> JsonDict | None:
    return None if value is None else value.to_json_dict()
