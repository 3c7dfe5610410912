"""Lookups over the image index: `search_image` (by example), `search_text` (by words) and `find_sources`
(where an image or a copy of it appears, oldest first)."""

from query.inputs import QueryInputError
from query.search import Searcher, find_sources, search_image, search_text

__all__ = ["QueryInputError", "Searcher", "find_sources", "search_image", "search_text"]
