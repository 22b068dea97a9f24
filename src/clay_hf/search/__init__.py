"""Similarity search over Clay embeddings with LanceDB (`pip install clay_hf[search]`)."""

from .query import nearest, query_vector, search, write_hits
from .table import ANN_THRESHOLD, METRICS, IndexInfo, SearchIndexError, build_index, open_index

__all__ = [
    "ANN_THRESHOLD",
    "METRICS",
    "IndexInfo",
    "SearchIndexError",
    "build_index",
    "nearest",
    "open_index",
    "query_vector",
    "search",
    "write_hits",
]
