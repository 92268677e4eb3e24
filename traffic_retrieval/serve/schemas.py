"""The search API's request and response bodies.

These models are shared by every app ``create_app`` makes, so they declare only the
fixed rules; the limits that come from the settings (largest ``k``, query length,
queries per request) are checked by ``routes.py``, which also writes them into each
app's OpenAPI schema.
"""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ROUTED = "routed"  # the query's category is picked by the vehicle vocabulary, as predict does
ALL = "all"  # every category: the default of image and combined queries (an image has no text to route)
DEFAULT_K = 10  # results when a request does not say (max_k when that is smaller)


class Hit(BaseModel):
    rank: int
    id: int
    name: str
    score: float
    category: str | None
    label: str | None = Field(description="ATTR from the index's labels file, when it had one")
    label_text: str | None = Field(description="the label for people: pedestrian flags as attribute names")
    image_url: str
    thumbnail_url: str


class SearchResponse(BaseModel):
    query: str
    k: int
    category: str
    count: int
    took_ms: float = Field(description="time spent in the service, queueing and micro-batching included")
    results: list[Hit]


class QueryResults(BaseModel):
    query: str
    count: int
    results: list[Hit]


class BatchSearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)  # at most max_batch_queries of max_query_chars
    k: int = Field(DEFAULT_K, ge=1, strict=True)  # at most max_k
    category: str = ROUTED


class BatchSearchResponse(BaseModel):
    k: int
    category: str
    took_ms: float
    results: list[QueryResults]


class CombinedSearchRequest(BaseModel):
    """A combined query (docs/queries.md): texts in quotes and indexed images as ``#ID``, with
    ``+``/``-`` and ``W*`` weights; no file paths over HTTP (upload an image instead)."""

    model_config = ConfigDict(extra="forbid")
    expression: str = Field(min_length=1, description='e.g. 0.5*"red car" + 2*#123 - "truck"')  # at most max_query_chars
    k: int = Field(DEFAULT_K, ge=1, strict=True)  # at most max_k
    category: str = ALL


class Term(BaseModel):
    kind: str = Field(description="text, or id (an indexed image)")
    value: str | int
    weight: float = Field(description="signed: negative for a subtracted term")
    column: int


class CombinedSearchResponse(SearchResponse):
    terms: list[Term]


class ImageSearchForm(BaseModel):
    """The fields of ``POST /api/search/image`` besides the file ``image`` (form fields are text)."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(DEFAULT_K, ge=1)  # at most max_k
    category: str = ALL
