"""Small data sets bundled with the dependencies (no downloads)."""
