"""runwire's service: Starlette app, session runtime, run queue and workers, SQLite store, CLI."""
