"""Models: the registry of base and custom models, loading, GGUF conversion, tiny test models."""
