"""The `clay_hf` package logger: transformers' verbosity governs the package's log messages, and shows them as it
shows its own.

Every module logs through `transformers.utils.logging.get_logger(__name__)`, a child of the `clay_hf` logger made
here (imported first by the package, before any module makes its logger).
"""

from __future__ import annotations

import logging
import sys

from transformers.utils import logging as transformers_logging


class PackageLogger(logging.Logger):
    """The `clay_hf` logger, parent of every module's logger. Without a level of its own it takes transformers'
    verbosity once that departs from its default (`transformers.logging.set_verbosity_error()`,
    `TRANSFORMERS_VERBOSITY=error` silence load reports and band warnings; `set_verbosity_info()` shows the INFO
    records); at the default the root logger decides, as for any library."""

    @property
    def level(self) -> int:
        if self._own_level:
            return self._own_level
        verbosity = transformers_logging.get_verbosity()
        return logging.NOTSET if verbosity == transformers_logging.WARNING else verbosity

    @level.setter
    def level(self, value: int) -> None:
        self._own_level = value


class ConsoleHandler(logging.StreamHandler):
    """Writes the package's records to stderr, as transformers' library handler writes its own (prefixed
    `[clay_hf] `, to say whose they are), while the application has configured no logging (the root logger has no handler, where `logging.lastResort`
    would print warnings alone). An application that configures logging (`logging.basicConfig`, a file, pytest)
    gets the records through the root logger's handlers instead: each record is shown once."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("[clay_hf] %(message)s"))

    @property
    def stream(self):
        return sys.stderr  # whatever sys.stderr is now (as `logging.lastResort`), not what it was at import

    @stream.setter
    def stream(self, value) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


if not isinstance(logging.Logger.manager.loggerDict.get("clay_hf"), logging.Logger):  # not made, or a placeholder
    _logger_class = logging.getLoggerClass()
    logging.setLoggerClass(PackageLogger)
    logging.getLogger("clay_hf").addHandler(ConsoleHandler())
    logging.setLoggerClass(_logger_class)


__all__ = ["ConsoleHandler", "PackageLogger"]
