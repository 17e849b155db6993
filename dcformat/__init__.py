"""dcformat: read, write and validate .dcnn files (Deep Compression neural networks).

Light by design: numpy, protobuf and zstandard; torch and scipy are imported only when
asked for (framework="torch", get_sparse).
"""

from .encode import EncodedTensor, stored_size
from .encode import encode_tensor as encode
from .errors import (
    ChecksumError,
    DcnnError,
    DcnnIOError,
    EncodeError,
    FormatError,
    LimitError,
    VersionError,
)
from .layout import MAJOR, MINOR
from .reader import Codes, DcnnFile, TensorInfo, load_file, safe_open
from .tensors import Quantized, Raw, Source
from .validate import Problem, Report, validate
from .writer import Writer, save_file

__version__ = "0.1.0"
FORMAT_VERSION = (MAJOR, MINOR)

__all__ = [
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
    "safe_open",
    "save_file",
    "stored_size",
    "validate",
]
