"""Bounds on the shape of JSON a client sends: nesting depth and number-literal length.

Shared by the HTTP body limits (`service.limits`) and the WebSocket reader (`streaming.channels.ws`),
so both channels refuse the same documents. Deep nesting would otherwise reach the decoder's
recursion limit (a `RecursionError`, not a decode error), and long number literals overflow
or take quadratic time to parse. Pure bytes in, a reason (or None) out.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT_MAX_DEPTH", "DEFAULT_MAX_NUMBER_CHARS", "check_json_shape"]

DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_NUMBER_CHARS = 64
# A JSON string literal (with escapes); removed before counting brackets so that brackets and
# digits inside strings do not count.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def _number_run(limit: int) -> re.Pattern[bytes]:
    return re.compile(rb"[-+0-9.eE]{%d,}" % (limit + 1))


def check_json_shape(
    body: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_number_chars: int = DEFAULT_MAX_NUMBER_CHARS,
) -> str | None:
    """Why `body` is too deep or has too large a number, or None when it is within bounds.

    Syntax errors are left to the decoder (it names the position); this only bounds shape.
    Typical bodies take the fast path: too few brackets to be deep and no long digit run at
    all; only a suspicious body pays for the exact scan with string literals removed.
    """
    few_brackets = body.count(b"[") + body.count(b"{") <= max_depth
    if few_brackets and not _number_run(max_number_chars).search(body):
        return None
    without_strings = _STRING.sub(b'""', body)
    if _number_run(max_number_chars).search(without_strings):
        return f"a number literal is longer than {max_number_chars} characters"
    depth = 0
    for bracket in _NOT_BRACKET.sub(b"", without_strings):
        if bracket in b"[{":
            depth += 1
            if depth > max_depth:
                return f"JSON is nested deeper than {max_depth} levels"
        else:
            depth -= 1
    return None
