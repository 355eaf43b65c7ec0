"""``regatt serve``: the encoder (and a store, FAISS index or pgvector table) behind HTTP.

``batcher`` (micro-batching of same-size prepared images, bounded admission), ``metrics``
(Prometheus text), ``app`` (the FastAPI application; ``pip install 'regatt[serve]'``).
"""
