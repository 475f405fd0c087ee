"""The `runwire` console script (`runwire = "service.cli:main"`) and every command.

Only the standard library is imported at module level by `service.cli.main`, so
`runwire --help` stays fast; each command imports what it needs when it runs.
"""

from service.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
