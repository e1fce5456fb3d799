"""``python -m steer.report``."""

import sys

from steer.report import main

sys.exit(main())
