"""Serving without Ray: the versioned faiss item index, and the request bodies clients send."""
