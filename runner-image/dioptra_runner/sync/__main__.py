"""`python -m dioptra_runner.sync sync|push ...` (same as `dioptra plugins sync|push`)."""

import sys

from dioptra_runner.sync.command import main

sys.exit(main())
