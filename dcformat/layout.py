"""Constants of the .dcnn v1 layout and the reader limits (spec sections 2, 3 and 9)."""

from __future__ import annotations

import struct

MAGIC = b"\x89DCN\r\n\x1a\n"
MAJOR = 1
MINOR = 3  # the newest minor version this package reads and writes

# magic, major, minor, header_length, header_crc32, preamble_crc32 (of the 20 bytes before it)
PREAMBLE = struct.Struct("<8sHHIII")
PREAMBLE_SIZE = PREAMBLE.size  # 24
ALIGNMENT = 64

MAX_HEADER_BYTES = 64 << 20
MAX_RANK = 32
MAX_ELEMENTS = 1 << 56
MAX_NAME_BYTES = 4096
MAX_CODE_LENGTH = 16
MAX_ALPHABET = 1 << 16
MAX_CHUNK_SIZE = 1 << 20
# A tensor may not decode to more than MAX_EXPANSION bytes per stored byte (plus slack).
MAX_EXPANSION = 1024
EXPANSION_SLACK = 1 << 16


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """The smallest multiple of ``alignment`` that is >= n."""
    return -(-n // alignment) * alignment
