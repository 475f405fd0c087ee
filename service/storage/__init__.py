"""Storage: the SQLite store and its migrations, the one I/O thread, the event journal's file
side, run-directory history, retained runs and the data-directory lock.

Never imports `service.runtime`, `service.http` or `service.cli`.
"""
