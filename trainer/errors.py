"""Errors as one line of text: the one formatter for messages that must never become a traceback."""
from __future__ import annotations

ERROR_LINE_CHARS = 200  # an error's message is cut to this many characters in a one-line message


def first_line(e: BaseException, limit: int = ERROR_LINE_CHARS) -> str:
    """The first line of `e`'s message cut to `limit` characters, or its type name when it has no message."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


def one_line(e: BaseException, limit: int = ERROR_LINE_CHARS) -> str:
    """'Type: first line of the message', cut short: for errors from deep inside a library (torch.distributed, zlib)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:limit] if text else ''}"
