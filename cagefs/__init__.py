"""cagefs: a transparent encrypted filesystem whose every backing file is an age v1 file."""


def __getattr__(name: str) -> str:
    """`__version__`, looked up when asked: importing importlib.metadata took 30-70 ms of the
    start of every process (each command, the daemon, each sealer)."""
    if name != "__version__":
        raise AttributeError(f"module 'cagefs' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cagefs")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"
