"""The Redis fixture is a real server that keeps acknowledged writes across a SIGKILL."""

from __future__ import annotations

import redis
from redis_server import RedisServer


def test_redis_server_keeps_acknowledged_writes_across_sigkill(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("s", {"k": "v"})
    client.close()
    redis_server.kill()
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert [fields for _, fields in client.xrange("s")] == [{b"k": b"v"}]
    finally:
        client.close()
