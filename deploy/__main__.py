"""``python -m deploy run|credentials ...`` (see :mod:`deploy.run`)."""

import sys

from deploy.run import main

sys.exit(main())
