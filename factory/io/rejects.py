"""Reject records: every input clip ends as labelled rows or as one of these.

A reject names the input, the stage, the reason and, where there is one, the remedy.
Stages: ``listing`` (the corpus row itself), ``decode`` (reading the file), ``label``
(the labeler), ``write`` (the output store).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

STAGES = ("listing", "decode", "label", "write")


@dataclass(frozen=True)
class Reject:
    input: str  # the clip key (video_id) or the corpus row reference
    stage: str
    reason: str
    remedy: str = ""
    uri: str = ""
    split: str | None = None  # the corpus split of the row, where known

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown reject stage {self.stage!r}")

    def to_row(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        text = f"clip {self.input!r} ({self.stage}): {self.reason}"
        return f"{text}; {self.remedy}" if self.remedy else text


class ClipError(Exception):
    """A per-clip problem; carries what becomes a :class:`Reject`."""

    def __init__(self, stage: str, reason: str, remedy: str = "") -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.remedy = remedy

    def to_reject(self, key: str, uri: str = "") -> Reject:
        return Reject(key, self.stage, self.reason, self.remedy, uri)
