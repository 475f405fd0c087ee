"""Runtime: sessions and their state machine, the run queue and scheduler, the run lifecycle,
execution, recovery after a restart, sources, sinks, profiles, memory budget, settings.

Never imports `service.http` or `service.cli`.
"""
