"""NCRONTAB, the six-field cron dialect of Azure Functions timer triggers:
``{second} {minute} {hour} {day} {month} {day-of-week}``.

Used to validate CMK_SWEEP_SCHEDULE at start-up and by the local Functions host to fire timers.
Fields accept ``*``, numbers, ranges ``a-b``, steps ``*/n`` and ``a-b/n``, lists, and the English
month and day names (JAN-DEC, SUN-SAT). Day-of-week 0 (or 7) is Sunday. When both day-of-month and
day-of-week are restricted, a time matches if either does, as in cron.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = {name: number for number, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
_DAYS = {name: number for number, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
#: Searching further than this for a match means the expression can never fire (e.g. 30 February).
_SEARCH_LIMIT = timedelta(days=366 * 5)


class NcrontabError(ValueError):
    """The expression is not valid NCRONTAB; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Schedule:
    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    day_restricted: bool
    weekday_restricted: bool

    def matches(self, moment: datetime) -> bool:
        return (
            moment.second in self.seconds
            and moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.month in self.months
            and self._day_matches(moment)
        )

    def _day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.day_restricted and self.weekday_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok

    def next_after(self, moment: datetime) -> datetime:
        """The first matching time strictly after ``moment`` (same tzinfo), to the second."""
        candidate = moment.replace(microsecond=0) + timedelta(seconds=1)
        limit = moment + _SEARCH_LIMIT
        while candidate <= limit:
            if candidate.month not in self.months:
                candidate = _start_of_next_month(candidate)
            elif not self._day_matches(candidate):
                candidate = candidate.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif candidate.hour not in self.hours:
                candidate = candidate.replace(minute=0, second=0) + timedelta(hours=1)
            elif candidate.minute not in self.minutes:
                candidate = candidate.replace(second=0) + timedelta(minutes=1)
            elif candidate.second not in self.seconds:
                candidate += timedelta(seconds=1)
            else:
                return candidate
        raise NcrontabError(f"{self.expression!r} never fires")


def _start_of_next_month(moment: datetime) -> datetime:
    first = moment.replace(day=1, hour=0, minute=0, second=0)
    return first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)


def parse(expression: str) -> Schedule:
    fields = expression.split()
    if len(fields) != 6:
        raise NcrontabError(f"{expression!r} has {len(fields)} fields; NCRONTAB needs six (with seconds)")
    values = [
        _parse_field(text, name, low, high, names)
        for text, (name, low, high, names) in zip(fields, _FIELDS, strict=True)
    ]
    weekdays = frozenset(day % 7 for day in values[5])
    schedule = Schedule(
        expression=expression,
        seconds=values[0], minutes=values[1], hours=values[2], days=values[3], months=values[4],
        weekdays=weekdays, day_restricted=fields[3] != "*", weekday_restricted=fields[5] != "*",
    )
    schedule.next_after(datetime(2000, 1, 1))  # reject expressions that can never fire
    return schedule


def _parse_field(text: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    selected: set[int] = set()
    for part in text.split(","):
        if not part:
            raise NcrontabError(f"empty item in {name} field {text!r}")
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise NcrontabError(f"step {step_text!r} in {name} field {text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            start_text, end_text = base.split("-", 1)
            start, end = _value(start_text, name, low, high, names), _value(end_text, name, low, high, names)
            if start > end:
                raise NcrontabError(f"range {base!r} in {name} field runs backwards")
        else:
            start = _value(base, name, low, high, names)
            end = high if step_text else start
        selected.update(range(start, end + 1, step))
    return frozenset(selected)


def _value(text: str, name: str, low: int, high: int, names: dict[str, int]) -> int:
    upper = text.upper()
    if upper in names:
        return names[upper]
    if not text.isdigit():
        raise NcrontabError(f"{text!r} is not a valid {name}")
    number = int(text)
    if not low <= number <= high:
        raise NcrontabError(f"{name} {number} is outside {low}-{high}")
    return number
