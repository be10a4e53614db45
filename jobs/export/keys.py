"""Sample keys: what names a sample's files in a tar shard or an imagefolder.

WebDataset groups a tar's members into samples by the part of the base name before its first dot, so a
key must hold no dot (nor a slash, which would make a folder). A key is the row's id with every
character other than ASCII letters, digits and `-` written as `_` and two hex digits per UTF-8 byte,
then `_` and the image index: `a.b/c` image 0 is `a_2eb_2fc_0`. The index never holds a `_` and an
escape is always `_` and two hex digits, so two different (id, index) pairs never share a key. Ids whose
escaped form would make an overlong file name keep a prefix and a hash: `_h` never occurs in an escaped id.
"""

from __future__ import annotations

import hashlib
import string

_KEPT = frozenset(string.ascii_letters + string.digits + "-")
MAX_ESCAPED = 160  # file names stay well under the usual 255-byte limit, extension and index included
_PREFIX = 64


def escape(text: str) -> str:
    return "".join(char if char in _KEPT else "".join(f"_{b:02x}" for b in char.encode()) for char in text)


def sample_key(row_id: object, image_index: int | None) -> str:
    text = str(row_id)
    escaped = escape(text)
    if len(escaped) > MAX_ESCAPED:
        escaped = f"{escaped[:_PREFIX]}_h{hashlib.sha256(text.encode()).hexdigest()[:32]}"
    return f"{escaped}_{image_index or 0}"
