"""The search page and JSON API over a retrieval index."""
