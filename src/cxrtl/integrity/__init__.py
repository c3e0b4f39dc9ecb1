"""Data integrity: duplicate search across splits and datasets, and split leakage checks."""
