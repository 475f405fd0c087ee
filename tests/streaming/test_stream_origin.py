"""Origin checks of the streaming handshakes."""

from __future__ import annotations

import pytest

from streaming.security import origin_allowed


@pytest.mark.parametrize(
    ("headers", "allowed", "expected"),
    [
        ({"host": "svc:8000"}, [], True),  # no Origin: a script, not a browser
        ({"host": "svc:8000", "origin": "http://svc:8000"}, [], True),  # same origin
        ({"host": "SVC", "origin": "http://svc:80"}, [], True),  # default port, case
        ({"host": "svc:8000", "origin": "http://evil.example"}, [], False),
        ({"host": "svc:8000", "origin": "http://evil.example"}, ["*"], True),
        ({"host": "svc:8000", "origin": "https://ui.example"}, ["https://ui.example"], True),
        ({"host": "svc:8000", "origin": "https://ui.example:443"}, ["https://UI.example"], True),
        ({"host": "svc:8000", "origin": "http://ui.example"}, ["https://ui.example"], False),
        ({"host": "svc:8000", "origin": "null"}, ["https://ui.example"], False),
        ({"host": "svc:8000", "origin": "http://svc:9000"}, [], False),  # other port
    ],
)
def test_origin_allowed(headers: dict[str, str], allowed: list[str], expected: bool) -> None:
    assert origin_allowed(headers, allowed) is expected
