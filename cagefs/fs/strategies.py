"""Which staging a file gets: the per-file I/O strategy (DESIGN.md, "Strategies").

- stream: new or truncated files written in order are encrypted straight into their new
  version; anything else falls back to the scratch file, so memory stays constant.
- memory: out-of-order changes are staged in RAM.
- tempfile: every change is staged in the encrypted scratch file, even in-order writes.
- auto: stream while sequential; otherwise RAM up to `memory_threshold`, scratch beyond
  (moving from RAM to scratch when a file grows past it).
"""

import enum
from dataclasses import dataclass
from pathlib import Path

from cagefs.fs.staging import BlockStore, MemoryBlocks, ScratchBlocks


class Strategy(enum.StrEnum):
    AUTO = "auto"
    STREAM = "stream"
    MEMORY = "memory"
    TEMPFILE = "tempfile"


@dataclass(frozen=True)
class Policy:
    strategy: Strategy
    memory_threshold: int
    root: Path

    @property
    def streams(self) -> bool:
        """Whether in-order writes to a new or truncated file go straight to a new version."""
        return self.strategy in (Strategy.STREAM, Strategy.AUTO)

    def blocks_for(self, size: int) -> BlockStore:
        if self.strategy is Strategy.MEMORY or (
            self.strategy is Strategy.AUTO and size <= self.memory_threshold
        ):
            return MemoryBlocks()
        return ScratchBlocks(self.root)

    def should_spill(self, blocks: BlockStore, size: int) -> bool:
        """Auto moves a file's staging from RAM to scratch once it outgrows the threshold."""
        return (
            self.strategy is Strategy.AUTO
            and isinstance(blocks, MemoryBlocks)
            and size > self.memory_threshold
        )
