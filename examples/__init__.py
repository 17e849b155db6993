"""Runnable examples and the real models and data they use (not part of the installed package)."""
