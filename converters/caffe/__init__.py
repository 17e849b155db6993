"""Import of nets published in the Deep Compression release format (Caffe ``.net`` +
deploy prototxt)."""

from converters.caffe.prototxt import Ident, Message, parse
from converters.caffe.release import (
    CaffeImportError,
    ReleaseLayer,
    ReleaseTensor,
    SparseWeight,
    decode_dense,
    dense_codes,
    encode_release,
    read_release,
)
from converters.caffe.shapes import NetShapes, infer_shapes, release_layers

__all__ = [
    "CaffeImportError",
    "Ident",
    "Message",
    "NetShapes",
    "ReleaseLayer",
    "ReleaseTensor",
    "SparseWeight",
    "decode_dense",
    "dense_codes",
    "encode_release",
    "infer_shapes",
    "parse",
    "read_release",
    "release_layers",
]
