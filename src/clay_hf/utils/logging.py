"""The `clay_hf` package logger: transformers' verbosity governs the package's log messages.

Every module logs through `transformers.utils.logging.get_logger(__name__)`, a child of the `clay_hf` logger made
here (imported first by the package, before any module makes its logger).
"""

from __future__ import annotations

import logging

from transformers.utils import logging as transformers_logging


class PackageLogger(logging.Logger):
    """The `clay_hf` logger, parent of every module's logger. Without a level of its own it takes transformers'
    verbosity once that departs from its default (`transformers.logging.set_verbosity_error()`,
    `TRANSFORMERS_VERBOSITY=error` silence load reports and band warnings); at the default the root logger decides,
    as for any library."""

    @property
    def level(self) -> int:
        if self._own_level:
            return self._own_level
        verbosity = transformers_logging.get_verbosity()
        return logging.NOTSET if verbosity == transformers_logging.WARNING else verbosity

    @level.setter
    def level(self, value: int) -> None:
        self._own_level = value


if not isinstance(logging.Logger.manager.loggerDict.get("clay_hf"), logging.Logger):  # not made, or a placeholder
    _logger_class = logging.getLoggerClass()
    logging.setLoggerClass(PackageLogger)
    logging.getLogger("clay_hf")
    logging.setLoggerClass(_logger_class)


__all__ = ["PackageLogger"]
