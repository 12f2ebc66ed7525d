"""``python -m clip_adapter.cli ...`` (the same as the ``clip-adapter`` command)."""
import sys

from . import main

sys.exit(main())
