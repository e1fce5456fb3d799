"""``python -m steer.datacheck``."""

import sys

from steer.datacheck import main

sys.exit(main())
