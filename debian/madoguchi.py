#!/usr/bin/python3
"""The ``madoguchi`` command of the Debian packages.

The modules live in the private directory /usr/lib/madoguchi (their top-level
names, bus/drivers/edge/central, are too generic for dist-packages).  The
sub-commands are entry points of the madoguchi distribution found there, so a
counter with only madoguchi-edge installed lists only the edge's commands.
"""

import sys

sys.path.insert(0, "/usr/lib/madoguchi")

from bus.cli import main

sys.exit(main())
