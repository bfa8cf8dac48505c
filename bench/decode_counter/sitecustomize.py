"""Counts PIL image opens in every Python process started with this folder on PYTHONPATH.

bench/data_pipeline.py puts it there for a search, so the driver and every Ray worker count the
images they decode: one byte per `Image.open`, appended to $DECODE_COUNT_DIR/<pid>.
"""

import os

if os.environ.get("DECODE_COUNT_DIR"):
    from PIL import Image

    _open = Image.open

    def _counting_open(*args, **kwargs):
        with open(os.path.join(os.environ["DECODE_COUNT_DIR"], str(os.getpid())), "ab") as f:
            f.write(b".")
        return _open(*args, **kwargs)

    Image.open = _counting_open
