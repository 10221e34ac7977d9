"""HTTP layer: the aiohttp app factory, routes and middleware."""

from .app import create_app

__all__ = ["create_app"]
