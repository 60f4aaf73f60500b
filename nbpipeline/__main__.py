"""`python -m nbpipeline` is `nbp`."""

import sys

from nbpipeline.cli import main

sys.exit(main())
