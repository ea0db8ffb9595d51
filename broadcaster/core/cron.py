"""Cron expressions for the schedule in config.toml (pure).

Five fields: minute hour day-of-month month day-of-week, each `*`, a number,
a range `a-b`, a step `*/n` or `a-b/n`, or a comma list of those. Day of week
is 0-6 from Sunday (7 is Sunday too). As in cron, when both day fields are
restricted a day matching either one counts.
"""

from dataclasses import dataclass
from datetime import datetime

from broadcaster.errors import BadInput

FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches(self, when: datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        day_ok, weekday_ok = when.day in self.days, (when.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def parse_cron(text: str) -> Cron:
    parts = text.split()
    if len(parts) != 5:
        raise BadInput(f"expected a cron expression of 5 fields (minute hour day month weekday), got {text!r}")
    values = [_field(part, *spec) for part, spec in zip(parts, FIELDS)]
    weekdays = frozenset(d % 7 for d in values[4])
    return Cron(values[0], values[1], values[2], values[3], weekdays, parts[2] == "*", parts[4] == "*")


def _field(part: str, name: str, low: int, high: int) -> frozenset[int]:
    found: set[int] = set()
    for item in part.split(","):
        found |= _item(item, name, low, high)
    return frozenset(found)


def _item(item: str, name: str, low: int, high: int) -> set[int]:
    span, _, step_text = item.partition("/")
    try:
        step = int(step_text) if step_text else 1
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (int(x) for x in span.split("-", 1))
        else:
            start = end = int(span)
    except ValueError:
        raise BadInput(f"expected numbers, ranges or steps in the cron {name} field, got {item!r}") from None
    if step < 1 or not low <= start <= end <= high:
        raise BadInput(f"expected the cron {name} field within {low}-{high}, got {item!r}")
    return set(range(start, end + 1, step))
