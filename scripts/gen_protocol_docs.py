"""Print docs/protocol.md, generated from the fleet package (`make docs` writes it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fleet.docs import protocol_markdown

if __name__ == "__main__":
    sys.stdout.write(protocol_markdown())
