"""Build the optional native decoder; everything else is in pyproject.toml.

``optional=True`` lets the install go on without a C compiler: dcformat then decodes
with its numpy path (the same results, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dcformat.codec._native", ["dcformat/codec/_native.c"], optional=True, extra_compile_args=["-O3"]
        ),
        # Symbol counts and Huffman packing (dcformat/codec/huffman.py falls back to numpy without it).
        Extension(
            "dcformat.codec._encode", ["dcformat/codec/_encode.c"], optional=True, extra_compile_args=["-O3"]
        ),
        # Nearest-centroid codes (converters/compress/assign.py falls back to numpy without it).
        Extension(
            "converters.compress._assign",
            ["converters/compress/_assign.c"],
            optional=True,
            extra_compile_args=["-O3"],
        ),
        # Lloyd iterations (converters/compress/kmeans.py falls back to numpy without it); no FMA
        # contraction, so its float64 sums are numpy's, bit for bit.
        Extension(
            "converters.compress._kmeans",
            ["converters/compress/_kmeans.c"],
            optional=True,
            extra_compile_args=["-O3", "-ffp-contract=off"],
        ),
        # Products on the compressed form (dcformat/codec/matvec.py falls back to numpy without it).
        Extension(
            "dcformat.codec._matvec", ["dcformat/codec/_matvec.c"], optional=True, extra_compile_args=["-O3"]
        ),
    ]
)
