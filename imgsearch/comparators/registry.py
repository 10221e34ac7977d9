"""The comparators a daemon offers, looked up by name; built-ins arrive as entry points too."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from importlib.metadata import entry_points

from ..errors import BadRequest
from .base import Comparator

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "imgsearch.comparators"
# Names appear in URLs, JSON keys and cache directory names: keep them plain.
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class ComparatorRegistry:
    """Comparators by name, in registration order."""

    def __init__(self, comparators: Iterable[Comparator] = ()) -> None:
        self._by_name: dict[str, Comparator] = {}
        for comparator in comparators:
            self.register(comparator)

    @classmethod
    def from_entry_points(cls, group: str = ENTRY_POINT_GROUP) -> ComparatorRegistry:
        """Load every entry point of `group` (a class or factory); one that fails is skipped."""
        registry = cls()
        for point in sorted(entry_points(group=group), key=lambda p: p.name):
            try:
                comparator = point.load()()
                registry.register(comparator)
            except Exception:
                log.exception("skipping comparator entry point %r (%s)", point.name, point.value)
        log.debug("comparators from entry points: %s", ", ".join(registry.names()))
        return registry

    @classmethod
    def builtins(cls) -> ComparatorRegistry:
        """The six built-in comparators, without consulting package metadata."""
        from .basic import TemplateComparator
        from .histogram import HistogramComparator
        from .orb import OrbComparator
        from .sift import SiftComparator
        from .ssim import SsimComparator
        from .verify import VerifyComparator

        return cls(
            [
                TemplateComparator(),
                SiftComparator(),
                SsimComparator(),
                HistogramComparator(),
                OrbComparator(),
                VerifyComparator(),
            ]
        )

    def register(self, comparator: Comparator) -> None:
        """Add a comparator (ValueError on a bad or taken name, TypeError on a non-comparator)."""
        if not isinstance(comparator, Comparator):
            raise TypeError(f"{comparator!r} does not implement the Comparator protocol")
        name = comparator.name
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"comparator name {name!r} must match {_NAME.pattern}")
        if name in self._by_name:
            raise ValueError(f"a comparator named {name!r} is already registered")
        self._by_name[name] = comparator

    def get(self, name: str) -> Comparator:
        """The comparator called `name`; BadRequest (400) naming the valid ones otherwise."""
        comparator = self._by_name.get(name.strip().lower())
        if comparator is None:
            raise BadRequest(f"unknown comparator {name!r}; valid: {', '.join(self.names())}")
        return comparator

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        return list(self._by_name)

    def parse(self, values: Sequence[str]) -> list[Comparator]:
        """Comparators from repeated and/or comma-separated names, deduplicated, in order."""
        chosen: dict[str, Comparator] = {}
        for value in values:
            for part in value.split(","):
                if part.strip():
                    comparator = self.get(part)
                    chosen.setdefault(comparator.name, comparator)
        return list(chosen.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)
