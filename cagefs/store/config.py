"""The store's settings, `.cagefs/config.toml`: read strictly, written atomically by hand.

Unknown keys are refused rather than ignored, so that a typo in a setting (or a store made by a
newer cagefs) is noticed instead of silently running with defaults.
"""

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cagefs.errors import CageError
from cagefs.store.atomic import replace_atomically
from cagefs.store.layout import CONFIG_FILE, SUFFIX

FORMAT_VERSION = 1
STRATEGIES = ("auto", "stream", "memory", "tempfile")
MIB = 1 << 20


@dataclass
class StoreConfig:
    format_version: int = FORMAT_VERSION
    suffix: str = SUFFIX
    recipients: list[str] = field(default_factory=list)
    strategy: str = "auto"
    # Bytes: files up to this size are staged in RAM by the memory/auto strategies, larger ones
    # in an encrypted scratch file.
    memory_threshold: int = 64 * MIB
    # Random reads are served from the kernel's page cache (fs/pagestore.py): the chunk cache
    # holds what a file with writers reads (SQLite), which 32 MiB held as well as 64 did.
    chunk_cache_mib: int = 32
    # Seconds between grouped publishes of closed files (DESIGN.md, I3).
    publish_interval: float = 1.0

    @classmethod
    def load(cls, root: Path) -> "StoreConfig":
        path = root / CONFIG_FILE
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise CageError(f"{path}: not valid TOML ({exc})") from None
        except UnicodeDecodeError:
            raise CageError(f"{path}: not valid TOML (not UTF-8)") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CageError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(known)})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CageError(
                f"{path}: store format {data.get('format_version')!r} is not supported "
                f"(this cagefs reads format {FORMAT_VERSION})"
            )
        config = cls(**data)
        config.validate(path)
        return config

    def validate(self, where: Path | str) -> None:
        """Raise a one-line CageError naming the first bad setting."""
        problem = _problem(self)
        if problem:
            raise CageError(f"{where}: {problem}")

    def save(self, root: Path) -> None:
        self.validate(root / CONFIG_FILE)
        with replace_atomically(root, CONFIG_FILE, mode=0o644) as f:
            f.write(self.to_toml().encode())

    def to_toml(self) -> str:
        lines = [f"# cagefs store settings (format {FORMAT_VERSION}); unknown keys are refused."]
        for key, value in asdict(self).items():
            if isinstance(value, list):
                items = "".join(f"    {_toml_string(item)},\n" for item in value)
                lines.append(f"{key} = [\n{items}]")
            else:
                lines.append(f"{key} = {_toml_scalar(value)}")
        return "\n".join(lines) + "\n"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Beyond these a setting is a typo or a unit mistake, not a choice (RAM staging of 1 TiB files,
# a cache larger than any machine, a "group" interval of more than a day).
MAX_MEMORY_THRESHOLD = 1 << 40
MAX_CACHE_MIB = 1 << 20
MAX_PUBLISH_INTERVAL = 24 * 3600.0


def _strategy_problem(value: object) -> str | None:
    if value not in STRATEGIES:
        return f"must be one of {', '.join(STRATEGIES)}"
    return None


def _memory_threshold_problem(value: object) -> str | None:
    if not (_is_int(value) and 0 <= value <= MAX_MEMORY_THRESHOLD):  # type: ignore[operator]
        return f"must be a whole number of bytes from 0 to {MAX_MEMORY_THRESHOLD} (1 TiB)"
    return None


def _cache_problem(value: object) -> str | None:
    if not (_is_int(value) and 0 <= value <= MAX_CACHE_MIB):  # type: ignore[operator]
        return f"must be a whole number of MiB from 0 to {MAX_CACHE_MIB}"
    return None


def _interval_problem(value: object) -> str | None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        return "must be a number of seconds"
    if not 0 < value <= MAX_PUBLISH_INTERVAL:
        return f"must be more than 0 and at most {MAX_PUBLISH_INTERVAL:.0f} seconds"
    return None


# The settings a mount may also be given on its command line: one check for both ways.
SETTING_CHECKS = {
    "strategy": _strategy_problem,
    "memory_threshold": _memory_threshold_problem,
    "chunk_cache_mib": _cache_problem,
    "publish_interval": _interval_problem,
}


def setting_problem(name: str, value: object) -> str | None:
    """What is wrong with `value` for setting `name` ("must be ..."), or None."""
    return SETTING_CHECKS[name](value)


def _problem(config: StoreConfig) -> str | None:
    if config.suffix != SUFFIX:
        return f"suffix must be {SUFFIX!r} (got {config.suffix!r})"
    recipients = config.recipients
    if not isinstance(recipients, list) or not all(isinstance(r, str) for r in recipients):
        return "recipients must be a list of strings"
    if not recipients:
        return "recipients is empty: every file needs at least one recipient"
    for name in SETTING_CHECKS:
        value = getattr(config, name)
        problem = setting_problem(name, value)
        if problem:
            return f"{name} {problem} (got {value!r})"
    return None


def _toml_scalar(value: object) -> str:
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
