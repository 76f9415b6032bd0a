"""Data: readers, schema detection and normalisation, checks, splitting."""
