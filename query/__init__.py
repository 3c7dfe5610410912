"""k-NN lookups over the image index: `search_image` (by example) and `search_text` (by words)."""

from query.inputs import QueryInputError
from query.search import Searcher, search_image, search_text

__all__ = ["QueryInputError", "Searcher", "search_image", "search_text"]
