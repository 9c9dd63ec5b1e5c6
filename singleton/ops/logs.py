"""Log set-up for `singleton run`: plain text, or one JSON object per line for log shippers."""
from __future__ import annotations

import json
import logging
import sys
import time

from singleton.core.errors import ConfigError


class JsonFormatter(logging.Formatter):
    def __init__(self, replica_id: str) -> None:
        super().__init__()
        self.replica_id = replica_id

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "replica_id": self.replica_id,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level_name: str, fmt: str, replica_id: str) -> None:
    level = logging.getLevelName(str(level_name).upper())
    if not isinstance(level, int):
        raise ConfigError(f"bad log level {level_name!r}: use DEBUG, INFO, WARNING or ERROR")
    if fmt not in ("text", "json"):
        raise ConfigError(f"bad log format {fmt!r}: use text or json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(replica_id) if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
