"""Replace a store's own small files (config, identity, canary) all at once or not at all.

The new content goes to a temp in `.cagefs/tmp/` (same filesystem, and a name that
`remove_stray_temps` cleans after a crash), reaches the disk, then is renamed over the old file;
the directory is synced last so that the rename itself survives a power loss.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cagefs.store.layout import TEMP_PREFIX, tmp_dir
from cagefs.store.paths import fsync_dir


@contextmanager
def replace_atomically(root: Path, relative: str, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a file to write `root/relative` into; it is published only if the block succeeds."""
    fd, temp = tempfile.mkstemp(dir=tmp_dir(root), prefix=TEMP_PREFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        target = root / relative
        os.rename(temp, target)
    except BaseException:
        os.unlink(temp)
        raise
    fsync_dir(target.parent)
