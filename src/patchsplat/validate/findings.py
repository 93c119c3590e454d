"""What the validator found: one :class:`Finding` per problem, with the file and ids it concerns."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem in a scene.

    ``severity``  'error' (the scene cannot be used as it is) or 'warning' (usable; worth a look).
    ``kind``      a short snake_case code ('corrupt_file', 'missing_image', ...) for tests and tools.
    ``message``   one line for people; it names the ids (truncated) when there are any.
    ``file``      the file (or folder) concerned, as a path under the scene folder as given, or None.
    ``ids``       the first ``max_listed_ids`` ids (ints) or image names (strings) concerned.
    ``count``     how many items are concerned in all (``len(ids)`` unless truncated; 0 when not countable).
    """

    severity: Severity
    kind: str
    message: str
    file: str | None = None
    ids: tuple[int | str, ...] = field(default_factory=tuple)
    count: int = 0

    def __post_init__(self) -> None:
        # The message must stay a single line: it becomes the CLI's one-line error.
        object.__setattr__(self, "message", " ".join(self.message.split()))

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "kind": self.kind,
            "message": self.message,
            "file": self.file,
            "ids": list(self.ids),
            "count": self.count,
        }


def listed(items: Sequence[int | str], max_listed: int) -> tuple[tuple[int | str, ...], str]:
    """The first ``max_listed`` items and their text for a message: 'a, b, c (and 12 more)'."""
    shown = tuple(items[:max_listed])
    text = ", ".join(str(item) for item in shown)
    if len(items) > max_listed:
        text += f" (and {len(items) - max_listed} more)"
    return shown, text


def finding_for_items(
    severity: Severity,
    kind: str,
    summary: str,
    items: Sequence[int | str],
    max_listed: int,
    file: str | Path | None = None,
) -> Finding:
    """A finding about several items: ``summary`` is followed by ': ' and the (truncated) list."""
    shown, text = listed(items, max_listed)
    return Finding(severity, kind, f"{summary}: {text}", None if file is None else str(file), shown, len(items))


def first_error(findings: Iterable[Finding]) -> Finding | None:
    return next((f for f in findings if f.is_error), None)
