"""Search, from a parsed request to a page: the one owner of every step.

The retrieval port, the console, the CLI and the Python client (through the retrieval port) all
search through :class:`same_search.search.pipeline.Searcher`; route handlers only parse a request
(:class:`same_search.search.request.SearchRequest`) and answer its page.

- ``request``: what a search asks for, and the ranking in force (the library's choice, a
  request's fields over it).
- ``pipeline``: the steps in order: the query's vector, the candidates (tag filter, ``min_score``),
  query expansion, promotion of confirmed copies or the ``same_picture`` filter, the page.
- ``expansion``, ``promotion``: the two re-ranking steps a library may choose.
- ``pages``: cutting one page from a ranking so that pages concatenate.

The default, on every port and backend, is the spec's answer: nearest neighbours by descending
score, pages that concatenate, ``has_more`` exact. Re-ranking is a library's choice
(``query_expansion``, ``promote_same_picture``); its answers say so.

This package's ``__init__`` imports nothing, so the config can read the ranking's limits
without loading the search path.
"""
