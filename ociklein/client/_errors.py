"""
What goes wrong when talking to a registry, as the registry said it: the
spec's error code and message, so that a command can print one line.
"""

from __future__ import annotations

import json
from typing import Any


class RegistryError(Exception):
    """
    A request failed: C{code} is the registry's OCI error code (or a
    client-side one such as C{DIGEST_MISMATCH} or C{CONNECTION_FAILED}),
    C{message} what it said, C{status} the HTTP status when there was one.
    """

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# Codes a HEAD (which has no body) or a body-less error maps to, by status.
_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NOT_FOUND",
    405: "UNSUPPORTED",
    413: "SIZE_INVALID",
    416: "RANGE_INVALID",
    429: "TOOMANYREQUESTS",
}


def errorFromBody(status: int, phrase: str, body: bytes) -> RegistryError:
    """
    The first error of a spec JSON error body, or one made from the status
    when the body is not one.
    """
    document: Any = None
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        pass
    if isinstance(document, dict):
        errors = document.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            first = errors[0]
            code = str(first.get("code") or _STATUS_CODES.get(status, f"HTTP_{status}"))
            message = str(first.get("message") or phrase)
            return RegistryError(code, _oneLine(message), status)
    text = body.decode("utf-8", "replace").strip()
    message = phrase if not text or len(text) > 200 else f"{phrase}: {text}"
    return RegistryError(_STATUS_CODES.get(status, f"HTTP_{status}"), _oneLine(message), status)


def _oneLine(text: str) -> str:
    return " ".join(text.split())
