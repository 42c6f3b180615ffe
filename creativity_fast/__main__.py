"""``python -m creativity_fast ...`` (also what ``torchrun -m creativity_fast`` launches)."""

import sys

from .cli import main

sys.exit(main())
