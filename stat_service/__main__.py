"""``python -m stat_service import|export|erase``: the bulk tool (bulk/cli.py)."""

from __future__ import annotations

import sys

from .bulk.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
