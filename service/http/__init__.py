"""HTTP: the Starlette app and server, auth, browser security, limits, problem+json, codec,
OpenAPI, metrics, access log; `service.http.routes` holds one module per resource.

Never imports `service.cli`.
"""
