"""Where the tests find their data: the project's own fixtures and the optional ``../shared``."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: ``../shared`` beside the checkout (``REGATT_SHARED`` overrides it); tests needing it skip without it
SHARED = Path(os.environ.get("REGATT_SHARED", ROOT.parent / "shared"))
GT_FIXTURES = Path(__file__).parent / "fixtures" / "gt"
SHARED_GT = SHARED / "data" / "oxford5k-gt"
