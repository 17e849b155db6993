from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]
    BFLOAT16: _ClassVar[DType]
    FLOAT64: _ClassVar[DType]
    INT8: _ClassVar[DType]
    INT16: _ClassVar[DType]
    INT32: _ClassVar[DType]
    INT64: _ClassVar[DType]
    UINT8: _ClassVar[DType]
    UINT16: _ClassVar[DType]
    UINT32: _ClassVar[DType]
    UINT64: _ClassVar[DType]
    BOOL: _ClassVar[DType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    RAW: _ClassVar[Encoding]
    DENSE_CODES: _ClassVar[Encoding]
    SPARSE_CODES: _ClassVar[Encoding]
    DENSE_CODES_EXT: _ClassVar[Encoding]
    SPARSE_CODES_EXT: _ClassVar[Encoding]
    RAW_NARROW: _ClassVar[Encoding]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_ZSTD: _ClassVar[Compression]
DTYPE_UNSPECIFIED: DType
FLOAT32: DType
FLOAT16: DType
BFLOAT16: DType
FLOAT64: DType
INT8: DType
INT16: DType
INT32: DType
INT64: DType
UINT8: DType
UINT16: DType
UINT32: DType
UINT64: DType
BOOL: DType
ENCODING_UNSPECIFIED: Encoding
RAW: Encoding
DENSE_CODES: Encoding
SPARSE_CODES: Encoding
DENSE_CODES_EXT: Encoding
SPARSE_CODES_EXT: Encoding
RAW_NARROW: Encoding
COMPRESSION_NONE: Compression
COMPRESSION_ZSTD: Compression

class Section(_message.Message):
    __slots__ = ("offset", "length", "crc32")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    crc32: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class HuffmanStream(_message.Message):
    __slots__ = ("count", "code_lengths", "code_lengths_packed", "chunk_size", "chunk_offsets", "bit_length", "data")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CODE_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    CODE_LENGTHS_PACKED_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_OFFSETS_FIELD_NUMBER: _ClassVar[int]
    BIT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    count: int
    code_lengths: bytes
    code_lengths_packed: bytes
    chunk_size: int
    chunk_offsets: _containers.RepeatedScalarFieldContainer[int]
    bit_length: int
    data: Section
    def __init__(self, count: _Optional[int] = ..., code_lengths: _Optional[bytes] = ..., code_lengths_packed: _Optional[bytes] = ..., chunk_size: _Optional[int] = ..., chunk_offsets: _Optional[_Iterable[int]] = ..., bit_length: _Optional[int] = ..., data: _Optional[_Union[Section, _Mapping]] = ...) -> None: ...

class Codebook(_message.Message):
    __slots__ = ("dtype", "values", "values_packed")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VALUES_PACKED_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    values: bytes
    values_packed: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., values: _Optional[bytes] = ..., values_packed: _Optional[bytes] = ...) -> None: ...

class Scales(_message.Message):
    __slots__ = ("dtype", "rows_per_scale", "values")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ROWS_PER_SCALE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    rows_per_scale: int
    values: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., rows_per_scale: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class Outliers(_message.Message):
    __slots__ = ("count", "compression", "positions", "values")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    count: int
    compression: Compression
    positions: Section
    values: Section
    def __init__(self, count: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., positions: _Optional[_Union[Section, _Mapping]] = ..., values: _Optional[_Union[Section, _Mapping]] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("name", "shape", "dtype", "encoding", "nonzeros", "compression", "raw", "codebook", "codes", "index_bits", "gaps", "scales", "outliers", "stored_dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    NONZEROS_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    CODEBOOK_FIELD_NUMBER: _ClassVar[int]
    CODES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BITS_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    OUTLIERS_FIELD_NUMBER: _ClassVar[int]
    STORED_DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: DType
    encoding: Encoding
    nonzeros: int
    compression: Compression
    raw: Section
    codebook: Codebook
    codes: HuffmanStream
    index_bits: int
    gaps: HuffmanStream
    scales: Scales
    outliers: Outliers
    stored_dtype: DType
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[DType, str]] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., nonzeros: _Optional[int] = ..., compression: _Optional[_Union[Compression, str]] = ..., raw: _Optional[_Union[Section, _Mapping]] = ..., codebook: _Optional[_Union[Codebook, _Mapping]] = ..., codes: _Optional[_Union[HuffmanStream, _Mapping]] = ..., index_bits: _Optional[int] = ..., gaps: _Optional[_Union[HuffmanStream, _Mapping]] = ..., scales: _Optional[_Union[Scales, _Mapping]] = ..., outliers: _Optional[_Union[Outliers, _Mapping]] = ..., stored_dtype: _Optional[_Union[DType, str]] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("format", "skeleton", "attributes", "skeleton_zstd")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SKELETON_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SKELETON_ZSTD_FIELD_NUMBER: _ClassVar[int]
    format: str
    skeleton: bytes
    attributes: _containers.ScalarMap[str, str]
    skeleton_zstd: bytes
    def __init__(self, format: _Optional[str] = ..., skeleton: _Optional[bytes] = ..., attributes: _Optional[_Mapping[str, str]] = ..., skeleton_zstd: _Optional[bytes] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("producer", "metadata", "source", "tensors", "header_zstd")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HEADER_ZSTD_FIELD_NUMBER: _ClassVar[int]
    producer: str
    metadata: _containers.ScalarMap[str, str]
    source: Source
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    header_zstd: bytes
    def __init__(self, producer: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., source: _Optional[_Union[Source, _Mapping]] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., header_zstd: _Optional[bytes] = ...) -> None: ...
