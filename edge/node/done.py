"""Which frames of a series the node has finished, in bounded space.

A restarted node must not process again a frame whose records are already in the spool (a DAQ
re-sending a series after a crash), so the set of finished sequence numbers is kept durably, in
the same spool transaction as the frame's records. It is held as a watermark (every seq up to
``through`` is finished) plus the finished seqs above it, and never grows beyond ``max_above``
entries: when a seq never arrives (a gap upstream), the watermark moves past it once that many
later frames have finished, so a frame re-sent from that far back would be processed again.
Pure: no file, no socket.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

#: finished seqs kept above the watermark before it moves past a gap
MAX_ABOVE = 1024


@dataclass
class DoneSet:
    """Finished sequence numbers of one series: all seqs <= ``through``, plus ``above``."""

    through: int = -1
    above: set[int] = field(default_factory=set)
    max_above: int = MAX_ABOVE

    def __contains__(self, seq: int) -> bool:
        return seq <= self.through or seq in self.above

    def add(self, seq: int) -> None:
        """Mark ``seq`` finished, advance the watermark over contiguous seqs, keep the set bounded."""
        if seq in self:
            return
        self.above.add(seq)
        while len(self.above) > self.max_above:
            self.through = min(self.above) - 1
            self._advance()
        self._advance()

    def _advance(self) -> None:
        while self.through + 1 in self.above:
            self.through += 1
            self.above.discard(self.through)

    def to_json(self) -> str:
        """The durable form, e.g. ``{"through": 41, "above": [43, 44]}``."""
        return json.dumps({"through": self.through, "above": sorted(self.above)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> DoneSet:
        """Read the durable form; None (nothing stored yet) is the empty set."""
        if not text:
            return cls()
        data = json.loads(text)
        return cls(through=int(data["through"]), above={int(s) for s in data["above"]})
