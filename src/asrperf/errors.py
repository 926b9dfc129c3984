"""Errors a user can act on. Each message names the item and the fix, on one line."""


class AsrperfError(Exception):
    """Base class: an error whose message is meant for the user, printed without a traceback."""


class ConfigError(AsrperfError):
    """A configuration key or value is unknown or impossible."""


class DataError(AsrperfError):
    """An audio file, transcript, manifest or dataset cannot be used."""


class ModelError(AsrperfError):
    """A model name, path or checkpoint cannot be loaded."""


class MissingExtraError(AsrperfError):
    """An optional dependency needed for the chosen engine or source is not installed."""

    def __init__(self, package: str, needed_for: str, extra: str) -> None:
        super().__init__(f"`{package}` is needed for {needed_for}: pip install 'asrperf[{extra}]'")
        self.package = package
        self.extra = extra


def require(module: str, needed_for: str, extra: str, package: str | None = None):
    """Import `module` or raise MissingExtraError naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(package or module, needed_for, extra) from exc


class MeasurementError(AsrperfError):
    """A measurer cannot measure here (a counter is unreadable, a window is too short)."""


def check_keys(table: dict, allowed: set[str], where: str) -> None:
    """A ConfigError naming the first key of `table` not in `allowed`, with the valid ones."""
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"unknown key '{unknown[0]}' in {where}; valid keys: {', '.join(sorted(allowed))}")


class StoreError(AsrperfError):
    """The results store cannot be created, opened or read."""
