"""End-to-end demos."""
