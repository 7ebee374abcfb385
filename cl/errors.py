"""Errors that stop a run with one clear, actionable line (train.py prints them without a traceback)."""


class CLError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(CLError):
    """A config value or a stream/model/approach combination that cannot work."""


class DatasetError(CLError):
    """A dataset that is missing, corrupt or cannot be fetched."""


class TrainingError(CLError):
    """Training diverged (NaN/inf loss) or otherwise cannot continue."""
