"""same_search: an on-prem similar-image search daemon speaking the RTSAs wire API."""

__version__ = "0.1.0"
