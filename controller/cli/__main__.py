"""`python -m controller.cli`: the same as the cmkctl console script."""

import sys

from controller.cli.main import main

sys.exit(main())
