"""Finding lines: the faiss index, BM25, hybrid fusion, reranking at query time and the CPU exports; no training
code."""
