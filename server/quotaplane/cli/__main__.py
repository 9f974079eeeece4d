"""``python -m quotaplane.cli``: the same command as the ``quotaplane`` script."""

import sys

from quotaplane.cli.main import main

sys.exit(main())
