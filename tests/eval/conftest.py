"""Shared helpers of the eval tests: the fake layouts module on the path, and a runner shortcut."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
SRC = HERE.parents[1] / "src"
try:
    import attnseg.eval  # noqa: F401
except ImportError:  # not installed: test the checkout
    sys.path.insert(0, str(SRC))
