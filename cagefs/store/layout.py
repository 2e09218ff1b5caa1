"""Where things live in a backing store, and how plaintext names map to backing names.

File `a/b.txt` is kept as `STORE/a/b.txt.age`; directories and symlinks are mirrored as they
are; `STORE/.cagefs/` holds the store's own files. Anything else in STORE is foreign and is
never shown through the mount.
"""

import os
from pathlib import Path

SUFFIX = ".age"
META_DIR = ".cagefs"
TMP_DIR = f"{META_DIR}/tmp"
JOURNAL_DIR = f"{META_DIR}/journal"  # change records (store/journal.py)
CONFIG_FILE = f"{META_DIR}/config.toml"
IDENTITY_FILE = f"{META_DIR}/identity.age"
CANARY_FILE = f"{META_DIR}/canary.age"
AUTH_FILE = f"{META_DIR}/auth.age"
# An unfinished key change (store/keychange.py): its plan, and the authentication key it rotates to.
KEYCHANGE_FILE = f"{META_DIR}/keychange.json"
NEXT_AUTH_FILE = f"{META_DIR}/auth-next.age"
# Unfinished publishes of hard-linked files (store/links.py): replayed at the next mount.
LINKS_DIR = f"{META_DIR}/links"
NAME_MAX = 255 - len(SUFFIX)
TEMP_PREFIX = "v-"


def backing_file_name(name: str) -> str:
    return name + SUFFIX


def plain_file_name(backing: str) -> str | None:
    """The name a backing regular file is shown as, or None if the file is not ours."""
    if backing.endswith(SUFFIX) and len(backing) > len(SUFFIX):
        return backing[: -len(SUFFIX)]
    return None


def is_meta(parent: str | None, name: str) -> bool:
    """Whether `name` in the directory at plaintext path `parent` is the store's own `.cagefs`."""
    return parent == "" and name == META_DIR


def tmp_dir(root: Path) -> Path:
    return root / TMP_DIR


def create_meta_dirs(root: Path) -> None:
    """`.cagefs/` and `.cagefs/tmp/`, private to the owner."""
    (root / META_DIR).mkdir(mode=0o700, exist_ok=True)
    tmp_dir(root).mkdir(mode=0o700, exist_ok=True)


def remove_stray_temps(root: Path) -> int:
    """Delete versions a crash left unpublished; they were never visible, so nothing is lost."""
    removed = 0
    for entry in os.scandir(tmp_dir(root)):
        if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed += 1
    return removed
