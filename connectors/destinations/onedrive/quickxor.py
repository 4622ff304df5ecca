"""QuickXorHash: the content hash OneDrive and SharePoint report in a driveItem's `file.hashes`.

Microsoft Graph: a file's `hashes` are "Hashes of the file's binary content, if available"
(https://learn.microsoft.com/graph/api/resources/file); `quickXorHash` (base64) is "A proprietary
hash of the file that can be used to determine if the contents of the file change" and "the only
value that is guaranteed to be available for both OneDrive for work or school and OneDrive for
home" (https://learn.microsoft.com/graph/api/resources/hashes).

The algorithm, as "Code snippets: QuickXorHash algorithm" describes it
(https://learn.microsoft.com/onedrive/developer/code-snippets/quickxorhash): a 160-bit block; byte
i of the data is XORed in rotated left by 11*i bits; the block's bytes are reversed; the data's
length (64 bits, little-endian) is XORed into its low bytes. Read as a 160-bit little-endian
number, the result is the XOR of byte i shifted to bit (11*i mod 160), wrapping around, XORed with
length << 96. Since 11*i mod 160 repeats every 160 bytes, the bytes at the same offset modulo 160
are XORed together first (one pass over 160-byte rows), then each of the 160 sums is placed once.
"""

from __future__ import annotations

import base64

WIDTH = 160  # bits
SHIFT = 11
_ROW = WIDTH  # bytes i and i + 160 land on the same bit (11 * 160 is a multiple of 160)
_MASK = (1 << WIDTH) - 1


def quickxor_digest(data: bytes) -> bytes:
    """The 20-byte QuickXorHash of `data`."""
    view = memoryview(data)
    folded = 0
    for start in range(0, len(view), _ROW):  # XOR of all 160-byte rows, as little-endian numbers
        folded ^= int.from_bytes(view[start:start + _ROW], "little")
    rows = folded.to_bytes(_ROW, "little")
    block = 0
    for offset, byte in enumerate(rows):
        if byte:
            at = (SHIFT * offset) % WIDTH
            block ^= ((byte << at) | (byte >> (WIDTH - at))) & _MASK  # rotated left within 160 bits
    block ^= (len(data) & 0xFFFF_FFFF_FFFF_FFFF) << (WIDTH - 64)
    return block.to_bytes(WIDTH // 8, "little")


def quickxor_hash(data: bytes) -> str:
    """`quickXorHash` as Graph writes it: the digest in standard base64."""
    return base64.b64encode(quickxor_digest(data)).decode("ascii")
