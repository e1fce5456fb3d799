"""steer's one entry point: ``python run.py [overrides]`` or ``python run.py -m ...`` (multirun).

Everything is in the library, ``steer.stages.command.main`` (also ``steer run``): composition,
the checks, device slots, the run and a tuning trial's value.
"""

import sys

from steer.stages.command import main

if __name__ == "__main__":
    sys.exit(main())
