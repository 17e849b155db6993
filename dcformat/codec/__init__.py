"""Entropy coding: Huffman tables and encoding, relative-index gaps, and decoding (native
kernel or numpy)."""
