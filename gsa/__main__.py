"""``python -m gsa``: the gsa command line."""
import sys

from gsa.cli import main

sys.exit(main())
