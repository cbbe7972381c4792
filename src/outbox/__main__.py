"""``python -m src.outbox list|drain|retry|drop``."""

from .cli import main

raise SystemExit(main())
