"""`python -m dioptra_sync sync|push ...` (same as `dioptra plugins sync|push`)."""

import sys

from dioptra_sync.command import main

sys.exit(main())
