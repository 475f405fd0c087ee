"""`python -m service.cli` runs the `runwire` console script."""

import sys

from service.cli.main import main

sys.exit(main())
