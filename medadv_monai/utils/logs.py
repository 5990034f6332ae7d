"""A run's full log in a file, its console kept to progress bars and one summary line per epoch.

The bundles log per-iteration values through a ``StatsHandler`` named :data:`DETAIL_LOGGER` (``name:
medadv.details``, ``epoch_log: false``) and per-epoch summaries through a second ``StatsHandler``
(``iteration_log: false``); the attack grid logs each cell's full summary to :data:`DETAIL_LOGGER` too.
:class:`RunLog` (``initialize: $@run_log.open()``, ``finalize: $@run_log.close()``) writes everything at INFO and
above to one file, the detail lines only there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["DETAIL_LOGGER", "LOG_FORMAT", "RunLog"]

DETAIL_LOGGER = "medadv.details"
LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"


class RunLog:
    """Append the log of a run to ``path`` while it is open.

    Args:
        path: the log file (its folder is created; an existing file is appended to, so a resumed run keeps the
            lines of the interrupted one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handler: logging.Handler | None = None

    def open(self) -> RunLog:
        """Start writing: the root logger's records and :data:`DETAIL_LOGGER`'s (which never reach the console)
        go to the file."""
        if self._handler is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        details = logging.getLogger(DETAIL_LOGGER)
        details.setLevel(logging.INFO)
        details.propagate = False
        details.addHandler(handler)
        self._handler = handler
        return self

    def close(self) -> None:
        """Stop writing and close the file (a later run in the same process logs to its own file)."""
        if self._handler is None:
            return
        logging.getLogger().removeHandler(self._handler)
        logging.getLogger(DETAIL_LOGGER).removeHandler(self._handler)
        self._handler.close()
        self._handler = None
