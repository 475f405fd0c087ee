"""runwire's event streaming: asyncio broker with per-session replay, SSE and WebSocket channels,
CloudEvents envelope. Knows nothing of sessions' business or routes."""
