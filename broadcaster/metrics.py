"""Counters, gauges and histograms, and their Prometheus text exposition (format 0.0.4).

Only what /metrics needs: metrics with labels, a registry per server (so several
servers in one test process never mix), and a renderer. Values change on the
event loop thread only, so nothing here locks; nothing here does I/O either.

A family is one metric name with its HELP and TYPE; each distinct set of label
values is a child holding the numbers. A family without labels has exactly one
child, and its methods (`inc`, `set`, `observe`) act on it directly.
"""

import math
import re
from bisect import bisect_left
from collections.abc import Iterator, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]  # name suffix, labels, value


class CounterChild:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError(f"expected a counter increment of 0 or more, got {amount}")
        self.value += amount


class GaugeChild:
    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = float(value)

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class HistogramChild:
    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; the last is (last bound, +Inf)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # buckets are inclusive: value <= le
        self.sum += value
        self.count += 1

    def cumulative(self) -> Iterator[tuple[float, int]]:
        total = 0
        for bound, count in zip((*self.bounds, math.inf), self.counts):
            total += count
            yield bound, total


class Family:
    type_name = ""

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = ()):
        if not _METRIC_NAME.match(name):
            raise ValueError(f"expected a metric name like 'broadcaster_bytes_total', got {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__"):
                raise ValueError(f"expected label names like 'channel' for {name}, got {label!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"expected distinct label names for {name}, got {list(labelnames)}")
        self.name = name
        self.help = help_text
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], object] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _new_child(self):  # noqa: ANN202
        raise NotImplementedError

    def labels(self, *values: object, **named: object):  # noqa: ANN201
        """The child for these label values, created (at zero) on first use."""
        key = self._key(values, named)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _key(self, values: tuple[object, ...], named: dict[str, object]) -> tuple[str, ...]:
        if values and named:
            raise ValueError(f"expected label values either by position or by name for {self.name}, got both")
        if named:
            if set(named) != set(self.labelnames):
                raise ValueError(f"expected labels {list(self.labelnames)} for {self.name}, got {sorted(named)}")
            values = tuple(named[label] for label in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"expected {len(self.labelnames)} label values {list(self.labelnames)} for "
                f"{self.name}, got {len(values)}"
            )
        return tuple(str(value) for value in values)

    def clear(self) -> None:
        """Forget every child (for values taken afresh at each scrape: a channel gone is gone)."""
        self._children.clear()
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _only(self):  # noqa: ANN202
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {list(self.labelnames)}; pick a child with .labels() first")
        return self._children[()]

    def children(self) -> Iterator[tuple[Labels, object]]:
        for key in sorted(self._children):
            yield tuple(zip(self.labelnames, key)), self._children[key]

    def samples(self) -> Iterator[Sample]:
        for labels, child in self.children():
            yield "", labels, child.value


class Counter(Family):
    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    @property
    def value(self) -> float:
        return self._only().value


class Gauge(Family):
    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    @property
    def value(self) -> float:
        return self._only().value


class Histogram(Family):
    type_name = "histogram"

    def __init__(self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()):
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or any(not math.isfinite(b) for b in bounds) or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"expected finite, strictly increasing bucket bounds for {name}, got {list(buckets)}")
        if "le" in labelnames:
            raise ValueError(f"expected labels other than 'le' for histogram {name}; 'le' names its buckets")
        self.bounds = bounds
        super().__init__(name, help_text, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def samples(self) -> Iterator[Sample]:
        for labels, child in self.children():
            for bound, total in child.cumulative():
                yield "_bucket", (*labels, ("le", _number(bound))), total
            yield "_sum", labels, child.sum
            yield "_count", labels, child.count


class Registry:
    """The metrics of one server, rendered in the order they were made."""

    def __init__(self) -> None:
        self._families: dict[str, Family] = {}

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help_text, labelnames))

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help_text, labelnames))

    def histogram(
        self, name: str, help_text: str, labelnames: Sequence[str] = (), buckets: Sequence[float] = ()
    ) -> Histogram:
        return self._add(Histogram(name, help_text, labelnames, buckets))

    def _add(self, family):  # noqa: ANN001, ANN202
        if family.name in self._families:
            raise ValueError(f"expected a new metric name, but {family.name!r} is already registered")
        self._families[family.name] = family
        return family

    def render(self) -> str:
        return render(self._families.values())


def render(families) -> str:  # noqa: ANN001
    """The text exposition format: HELP and TYPE, then one line per sample, newline-terminated."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.help)}")
        lines.append(f"# TYPE {family.name} {family.type_name}")
        for suffix, labels, value in family.samples():
            lines.append(f"{family.name}{suffix}{_labels(labels)} {_number(value)}")
    return "".join(line + "\n" for line in lines)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels) + "}"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    """Whole numbers without a fraction ("3", not "3.0"), others as Python's shortest repr."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))
