"""Framework interop (torch, scipy): each imports its framework only when called."""
