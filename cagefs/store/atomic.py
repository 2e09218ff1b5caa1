"""Replace a store's own small files (config, identity, canary) all at once or not at all.

The new content goes to a temp in `.cagefs/tmp/` (same filesystem, and a name that
`remove_stray_temps` cleans after a crash), reaches the disk, then is renamed over the old file;
the directory is synced last so that the rename itself survives a power loss.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from cagefs.store.layout import TEMP_PREFIX, tmp_dir
from cagefs.store.links import put_in_place


@contextmanager
def replace_atomically(
    root: Path, relative: str, mode: int = 0o600, names: Sequence[str] = ()
) -> Iterator[BinaryIO]:
    """Yield a file to write `root/relative` into; it is published only if the block succeeds.
    `names`: every backing path of a hard-linked file, which all get the new file."""
    fd, temp = tempfile.mkstemp(dir=tmp_dir(root), prefix=TEMP_PREFIX)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        put_in_place(root, temp, relative, names)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
