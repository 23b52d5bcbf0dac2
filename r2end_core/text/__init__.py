"""Text encoders (sentence-transformers, bundled or from a folder) and a cache of their embeddings."""
