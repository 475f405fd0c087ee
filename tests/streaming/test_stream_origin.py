"""Origin and Host checks of the streaming handshakes (contract section 8)."""

from __future__ import annotations

import pytest

from streaming.security import HostPolicy, host_name, origin_allowed

LOOPBACK = HostPolicy("127.0.0.1")


@pytest.mark.parametrize(
    ("headers", "allowed", "expected"),
    [
        ({"host": "svc:8000"}, [], True),  # no Origin: a script, not a browser
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, [], True),  # own page
        ({"host": "x", "origin": "http://LOCALHOST:8000"}, [], True),  # own name, case
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:9000"}, [], False),  # other port
        ({"host": "svc:8000", "origin": "http://evil.example"}, [], False),
        ({"host": "svc:8000", "origin": "http://evil.example"}, ["*"], True),
        ({"host": "svc:8000", "origin": "https://ui.example"}, ["https://ui.example"], True),
        ({"host": "svc:8000", "origin": "https://ui.example:443"}, ["https://UI.example"], True),
        ({"host": "svc:8000", "origin": "http://ui.example"}, ["https://ui.example"], False),
        ({"host": "svc:8000", "origin": "null"}, ["https://ui.example"], False),
    ],
)
def test_origin_allowed(headers: dict[str, str], allowed: list[str], expected: bool) -> None:
    assert origin_allowed(headers, allowed, policy=LOOPBACK, server_port=8000) is expected


def test_origin_is_never_judged_by_the_requests_own_host() -> None:
    # DNS rebinding: evil.example resolves to 127.0.0.1, so Origin and Host agree. Same
    # "origin" by the Host header, and still refused.
    headers = {"host": "evil.example:8000", "origin": "http://evil.example:8000"}
    assert not origin_allowed(headers, [], policy=LOOPBACK, server_port=8000)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, True),  # HTTP/1.0 tools send none; a browser always does
        ("127.0.0.1", True),
        ("127.0.0.1:8000", True),
        ("localhost", True),
        ("LocalHost:1234", True),
        ("evil.example", False),
        ("evil.example:8000", False),
        ("127.0.0.1.evil.example", False),
        ("[::1]:8000", False),  # not the bound address
        ("localhost:notaport", False),
        ("localhost@evil.example", False),
        ("", False),
    ],
)
def test_loopback_server_answers_only_its_own_host_names(host: str | None, expected: bool) -> None:
    assert LOOPBACK.host_allowed(host) is expected


def test_allowed_hosts_add_names_and_wide_binds_are_not_enforced() -> None:
    policy = HostPolicy("127.0.0.1", ("Beamline-PC.local",))
    assert policy.host_allowed("beamline-pc.local:8000")
    assert not policy.host_allowed("other.local")
    assert HostPolicy("::1").host_allowed("[::1]:8000")
    assert HostPolicy("localhost").host_allowed("127.0.0.1")
    assert not HostPolicy("0.0.0.0").enforced  # beyond loopback a token is required instead
    assert HostPolicy("0.0.0.0").host_allowed("anything.example")


def test_host_name_parsing() -> None:
    assert host_name("[::1]:80") == "::1"
    assert host_name("Example.ORG") == "example.org"
    assert host_name("a b") is None
