"""`-o` options, and being called by mount(8) or fstab as a mount helper.

`mount -t fuse.cagefs STORE MNT -o OPTS` runs `/sbin/mount.fuse.cagefs STORE MNT -o OPTS` (a link
to cagefs), or, through fuse3's `mount.fuse3`, `cagefs STORE MNT -o OPTS`. Both become
`cagefs mount STORE MNT -o OPTS`. The `-o` list takes what mount(8) and fstab pass: kernel flags
(rw, ro, dev, suid, exec, ...) go to the mount, mount(8)'s and systemd's own options (auto,
nofail, _netdev, x-*, ...) are accepted and ignored, and every cagefs flag has an `-o` form
(passfile=FILE, identity=FILE, strategy=NAME, ...). Secrets come only from files: an option
that would carry a passphrase is refused without repeating it.
"""

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cagefs.errors import UsageError

# Passed on to the kernel mount as they are (libfuse knows them all).
KERNEL_FLAGS = frozenset(
    {
        "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "sync", "dirsync",
        "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime",
        "strictatime", "nostrictatime", "lazytime", "nolazytime",
    }
)  # fmt: skip
# mount(8)'s, fstab's and systemd's own: they have done their job before we are called.
IGNORED = frozenset(
    {"rw", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users",
     "owner", "group", "sloppy"}
)  # fmt: skip
IGNORED_PREFIXES = ("x-", "comment=", "subtype=")
# `-o NAME=VALUE` → the `cagefs mount` flag's destination; `-o debug` → --debug.
VALUE_OPTIONS = {
    "identity": "identity",
    "passfile": "passfile",
    "strategy": "strategy",
    "memory_threshold": "memory_threshold",
    "cache_mib": "cache_mib",
    "publish_interval": "publish_interval",
    "log": "log",
    "idle": "idle",
    "compact_idle": "compact_idle",
    "max_journaled_files": "max_journaled",
    "journal_slots_mib": "journal_slots_mib",
    "fsname": "fsname",
}
FLAG_OPTIONS = {
    "debug": "debug",
    "ro": "read_only",
    "allow_other": "allow_other",
    "accept_untagged": "accept_untagged",
}
SECRET_OPTIONS = ("password", "passphrase", "pass", "passwd", "key", "secret")


@dataclass
class MountOptionSet:
    """What a list of `-o` values asks for."""

    kernel: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)  # flag destination → value
    flags: set[str] = field(default_factory=set)  # flag destinations switched on


def parse_mount_options(
    values: Sequence[str],
    converters: dict[str, Callable[[str], object]],
    sloppy: bool = False,
) -> MountOptionSet:
    """Parse `-o` lists; `converters` check values exactly as the flags' own types do. An
    unknown option is refused (mount(8)'s `-s`, sloppy, ignores it instead)."""
    found = MountOptionSet()
    for item in (item.strip() for value in values for item in value.split(",")):
        name, has_value, text = item.partition("=")
        name = name.replace("-", "_")  # memory-threshold= as well as memory_threshold=
        if not item or item in IGNORED or item.startswith(IGNORED_PREFIXES):
            continue
        if item in KERNEL_FLAGS:
            found.kernel.append(item)
        elif item == "default_permissions":
            continue  # always on
        elif not has_value and name in FLAG_OPTIONS:
            found.flags.add(FLAG_OPTIONS[name])
        elif has_value and name in VALUE_OPTIONS:
            dest = VALUE_OPTIONS[name]
            value = _convert(name, text, converters.get(dest))
            if dest == "identity":
                found.values.setdefault(dest, []).append(value)  # type: ignore[union-attr]
            else:
                found.values[dest] = value
        elif name in SECRET_OPTIONS:
            raise UsageError(f"-o {name}=...: secrets are read from files only (passfile=FILE)")
        elif not sloppy:
            raise UsageError(f"unknown mount option {item!r} (see cagefs mount --help)")
    return found


def _convert(name: str, text: str, converter: Callable[[str], object] | None) -> object:
    if not text:
        raise UsageError(f"-o {name}= needs a value")
    if converter is None:
        return text
    try:
        return converter(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"-o {name}={text}: {exc}") from None


def helper_argv(program: str, argv: Sequence[str]) -> list[str] | None:
    """`cagefs mount` arguments for a mount(8) helper call, or None for a `-f` (fake) call.

    mount(8) calls `mount.fuse.cagefs SOURCE DIR [-sfnv] [-o OPTS] [-t TYPE]`; mount.fuse3
    calls `cagefs SOURCE DIR -o OPTS`."""
    parser = argparse.ArgumentParser(prog=program, add_help=False)
    parser.add_argument("source")
    parser.add_argument("directory")
    parser.add_argument("-o", dest="options", action="append", default=[])
    parser.add_argument("-t", dest="type")
    for letter in "sfnv":
        parser.add_argument(f"-{letter}", action="store_true")
    try:
        args = parser.parse_args(argv)
    except SystemExit:
        raise UsageError(
            f"usage: {program} STORE MOUNTPOINT [-o OPTIONS] (as mount -t fuse.cagefs calls it)"
        ) from None
    if args.type and args.type not in ("fuse.cagefs", "cagefs"):
        raise UsageError(f"{program}: type {args.type!r} is not fuse.cagefs")
    if args.f:  # mount -f: only pretend
        return None
    out = ["mount", args.source, args.directory]
    if args.options:
        out += ["-o", ",".join(args.options)]
    if args.s:
        out.append("--sloppy")
    return out


def looks_like_helper_call(argv: Sequence[str], verbs: Sequence[str]) -> bool:
    """`cagefs SOURCE DIR ...` (mount.fuse3's way): no verb first, and two operands."""
    if not argv or argv[0] in verbs or argv[0].startswith("-"):
        return False
    operands, skip = 0, False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("-o", "-t"):
            skip = True
        elif not arg.startswith("-"):
            operands += 1
    return operands >= 2
