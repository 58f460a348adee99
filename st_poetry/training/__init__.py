"""Training: the bi-encoder and reranker stages on one shared loop, and hard-negative mining."""
