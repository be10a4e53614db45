"""Hugging Face imagefolder: `shard-NNNNNN/{key}.png` ... and `shard-NNNNNN/metadata.jsonl` per shard.

`datasets.load_dataset("imagefolder", data_dir=DEST)` reads every shard folder's `metadata.jsonl`
(`file_name` relative to it, `key`, then the run's metadata columns). A shard's images are published one
by one and its `metadata.jsonl` last; a shard that was cut short, or that lost a file later, is rewritten
whole by the rerun (same names, same bytes): its marker lists every file of the folder with its size.
"""

from __future__ import annotations

import json

import pyarrow as pa

from workers.io import storage

METADATA_FILE = "metadata.jsonl"
FILE_NAME = "file_name"
KEY = "key"


def folder_name(shard: int) -> str:
    return f"shard-{shard:06d}"


class ImageFolderShard:
    """One shard folder being written; `commit()` publishes its `metadata.jsonl`."""

    def __init__(self, dest: str, shard: int, extension: str, metadata_columns: list[str]):
        self.shard = shard
        self.rows = 0
        self._folder = storage.join(dest, folder_name(shard))
        self._extension = extension
        self._columns = metadata_columns
        self._lines: list[bytes] = []
        self._sizes: dict[str, int] = {}  # image file name -> bytes: the marker lists every member
        storage.remove_temp_files(self._folder)

    def add(self, keys: list[str], rows: pa.Table, images: list[bytes]) -> None:
        for key, image, record in zip(keys, images, rows.select(self._columns).to_pylist()):
            name = f"{key}.{self._extension}"
            # Not synced one by one (thousands of small files); metadata.jsonl, published last, is.
            self._sizes[name] = storage.write_bytes(storage.join(self._folder, name), image, sync=False)
            line = {FILE_NAME: name, KEY: key, **record}
            self._lines.append(json.dumps(line, ensure_ascii=False, default=str).encode() + b"\n")
        self.rows += rows.num_rows

    def commit(self) -> dict[str, int]:
        metadata = b"".join(self._lines)
        storage.write_bytes(storage.join(self._folder, METADATA_FILE), metadata)
        prefix = folder_name(self.shard)
        # Each file by name and size, so that a rerun redoes a shard that lost (or got half of) any one of them.
        return {
            **{f"{prefix}/{name}": size for name, size in self._sizes.items()},
            f"{prefix}/{METADATA_FILE}": len(metadata),
        }

    def discard(self) -> None:
        """The images written so far stay; without `metadata.jsonl` the shard is incomplete and redone."""
