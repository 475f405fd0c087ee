"""Byte framing shared by every subscriber: WebSocket text frames and HTTP/1.1 chunks."""

from __future__ import annotations


def ws_text_frame(payload: bytes) -> bytes:
    """A final, unmasked (server-to-client) WebSocket text frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


def http_chunk(data: bytes) -> bytes:
    """One chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)
