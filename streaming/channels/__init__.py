"""The transports subscribers connect over: SSE (`channels.sse`) and WebSocket (`channels.ws`),
on Starlette/ASGI. Every uvicorn-specific assumption lives in `channels.fastpath`; the broker
core (`streaming.*` outside this package) imports neither Starlette nor uvicorn."""
