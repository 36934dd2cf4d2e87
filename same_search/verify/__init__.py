"""Same-picture verification: is a search hit an edited copy of the query, or merely alike?

A global descriptor ranks look-alikes well but cannot tell an edited copy from another photo
of a similar thing. This package adds what can: local features per item (``local_features``),
matched against the query's and checked geometrically (``matching``), combined with the
descriptor score into one explainable decision (``decision``).
"""
