"""Scoring models: the IR evaluator training shares, CCPM accuracy, the BM25 baseline rows, the report and its plots."""
