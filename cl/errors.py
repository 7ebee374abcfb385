"""Errors that stop a run with one clear, actionable line (train.py prints them without a traceback)."""
import errno

# what a full disk or an exhausted quota raises, anywhere the run writes
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class CLError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(CLError):
    """A config value or a stream/model/approach combination that cannot work."""


class DatasetError(CLError):
    """A dataset that is missing, corrupt or cannot be fetched."""


class TrainingError(CLError):
    """Training diverged (NaN/inf loss) or otherwise cannot continue."""


class WriteError(CLError):
    """A file of the run could not be written (a full disk, a quota, a folder that became read-only)."""


def first_cl_error(e: BaseException | None) -> CLError | None:
    """Hydra wraps errors raised while instantiating: find ours (to print its one line). A full disk met by a
    write outside the run's own writers (a logger's file) counts as ours too: it is no bug to trace back."""
    while e is not None:
        if isinstance(e, CLError):
            return e
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            return WriteError(f"could not write {e.filename or 'a file of the run'} ({e.strerror}): free space "
                              f"and resume")
        e = e.__cause__ or e.__context__
    return None


class RunInterrupted(Exception):
    """SIGINT/SIGTERM stopped the run after it saved what it needs to resume (cl/run/checkpointing.py); not a
    failure: train.py prints how to resume and exits with the shell's code for the signal."""

    def __init__(self, signum: int, where: str):
        import signal

        super().__init__(f"{signal.Signals(signum).name} {where}")
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM
