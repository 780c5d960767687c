"""HTTP serving: a FastAPI app with a dynamic batcher in front of one detector. Run it with ``python -m service``."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
