"""st_poetry: fine-tune Chinese sentence-embedding models to retrieve classical poetry lines from modern-Chinese
descriptions.

Layers, each a subpackage that imports only those below it (import-linter checks it in `just lint`):
cli > serve > training > evaluation > retrieval > data > core.
"""
