"""`python -m search`: the same command as `python search/run.py`.

    python -m search --strategy unfrozen
"""

import sys

from search.run import main

sys.exit(main(prog="python -m search"))
