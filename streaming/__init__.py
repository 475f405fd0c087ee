"""runwire's event streaming: asyncio broker with per-session replay, SSE and WebSocket channels,
CloudEvents envelope. Knows nothing of sessions' business or routes.

The broker core (the modules here) imports no web framework; `streaming.channels` serves it
over Starlette/ASGI, with every uvicorn-specific assumption in `streaming.channels.fastpath`."""
