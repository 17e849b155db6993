"""Import of nets published in the Deep Compression release format (Caffe ``.net`` +
deploy prototxt)."""

from converters.formats.caffe_release.prototxt import Ident, Message, parse
from converters.formats.caffe_release.read import FORMAT, read_net
from converters.formats.caffe_release.release import (
    CaffeImportError,
    ReleaseLayer,
    ReleaseTensor,
    SparseWeight,
    decode_dense,
    dense_codes,
    encode_release,
    read_release,
)
from converters.formats.caffe_release.shapes import NetShapes, infer_shapes, release_layers

__all__ = [
    "FORMAT",
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
    "read_net",
    "read_release",
    "release_layers",
]
