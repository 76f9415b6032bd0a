"""Knowledge bases: chunking, embedding, storage, retrieval (issue 6, in progress)."""
