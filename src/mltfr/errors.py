"""User-facing errors: the CLI prints these as one clear message, never a traceback."""


class MltfrError(Exception):
    """A problem the user can fix: the message names what is wrong and how to fix it."""


class ConfigError(MltfrError):
    """An invalid config key or value, or an unknown dataset/LLM/variant name."""


class DataError(MltfrError):
    """A malformed, empty or corrupted input file (dataset, cache, checkpoint)."""


def key_error(key: str, problem: str, fix: str) -> ConfigError:
    """A study config error naming its dotted key, the problem and the fix (mltfr.study)."""
    return ConfigError(f"config key `{key}`: {problem}. Fix: {fix}.")
