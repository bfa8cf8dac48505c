"""`python -m search`: the same command as `transfer-search` (search/run.py, and its export
and serve subcommands).

    python -m search --strategy unfrozen
"""

import sys

from search.run import console

sys.exit(console(prog="python -m search"))
