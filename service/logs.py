"""Logging for ``python -m service``: uvicorn's configuration, with credentials kept out of the access log."""

import copy
import logging
import re

from uvicorn.config import LOGGING_CONFIG

# A key sent as a query parameter (the service never reads one there, but clients try) would be written to
# the access log with the path; its value is replaced.
_SECRET_PARAMETER = re.compile(r"(?i)([?&][^=&#]*(?:key|token|secret|password|auth)[^=&#]*=)[^&#]*")


class RedactSecrets(logging.Filter):
    """Replaces the values of credential-like query parameters in uvicorn's access-log records with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > 2 and isinstance(args[2], str):  # (client, method, path, ...)
            record.args = (*args[:2], redact(args[2]), *args[3:])
        return True


def redact(path: str) -> str:
    return _SECRET_PARAMETER.sub(r"\1***", path)


def log_config() -> dict:
    """uvicorn's default logging configuration plus the redaction filter on the access log."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": RedactSecrets}
    config["handlers"]["access"].setdefault("filters", []).append("redact_secrets")
    return config
