"""The search page and its JSON API (`imgsearch serve`): FastAPI on uvicorn, over the query package."""

from web.app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
