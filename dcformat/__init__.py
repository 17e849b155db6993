"""dcformat: read, write and validate .dcnn files (Deep Compression neural networks).

Light by design: numpy, protobuf and zstandard; torch and scipy are imported only when
asked for (framework="torch", get_sparse). torch's ``load_into`` is in
``dcformat.interop.torch``.

The data path: ``encodings/`` turns a tensor into a header record and section bytes
(``encode``), ``file/writer`` lays them out atomically, ``file/header`` checks a file's
header, ``file/reader`` decodes through ``encodings/`` and ``codec/`` (Huffman, gaps).
"""

from .encodings import DEFAULT_CHUNK_SIZE, EncodedTensor, encode, stored_size
from .errors import (
    ChecksumError,
    DcnnError,
    DcnnIOError,
    EncodeError,
    FormatError,
    LimitError,
    VersionError,
)
from .file.atomic import replacing
from .file.reader import DcnnFile, TensorInfo, load_file, safe_open
from .file.writer import Writer, save_file
from .layout import MAJOR, MINOR
from .tensors import Codes, Narrow, Quantized, Raw, Source
from .validate import Problem, Report, validate

__version__ = "0.1.0"
FORMAT_VERSION = (MAJOR, MINOR)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "ChecksumError",
    "Codes",
    "DcnnError",
    "DcnnFile",
    "DcnnIOError",
    "EncodeError",
    "EncodedTensor",
    "FormatError",
    "LimitError",
    "Narrow",
    "Problem",
    "Quantized",
    "Raw",
    "Report",
    "Source",
    "TensorInfo",
    "VersionError",
    "Writer",
    "encode",
    "load_file",
    "replacing",
    "safe_open",
    "save_file",
    "stored_size",
    "validate",
]
