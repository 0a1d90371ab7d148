"""The web layer of the daemon: FastAPI routers by concern (pages, live, analyze, exams, exports, health,
metrics) on one Daemon."""

from .app import create_app, serve

__all__ = ["create_app", "serve"]
