"""WebDataset shards: `shard-NNNNNN.tar` with `{key}.png`, `{key}.txt`, `{key}.json` per sample, in sample
order, and beside each tar a sidecar `shard-NNNNNN.parquet` with the same metadata (img2dataset's layout).

Tar members carry fixed metadata (mtime 0, uid/gid 0, no user names, mode 0o644, PAX format), so the same
export gives the same bytes. The tar is streamed to its temporary name, never held in memory. Its bytes are
those `tarfile.open(mode="w|", format=PAX_FORMAT)` with `addfile` writes (the headers come from tarfile's
own `TarInfo.tobuf`), without `TarFile`'s per-member copy and its list of every member written so far.
"""

from __future__ import annotations

import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from workers.io import columns as C
from workers.io import storage
from workers.io.storage import AtomicFile

KEY = "key"


def tar_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


def sidecar_name(shard: int) -> str:
    return f"shard-{shard:06d}.parquet"


def sample_record(key: str, record: dict) -> bytes:
    """A sample's `.json`: its key and every metadata column (NaN and infinity as JSON's extensions)."""
    return json.dumps({KEY: key, **record}, ensure_ascii=False, default=str).encode()


class WebDatasetShard:
    """One tar shard being written; `commit()` publishes the tar, then its sidecar."""

    def __init__(self, dest: str, shard: int, extension: str, metadata_columns: list[str]):
        self.dest = dest
        self.shard = shard
        self.rows = 0
        self._extension = extension
        self._columns = metadata_columns
        self._file = AtomicFile(storage.join(dest, tar_name(shard)))
        self._sidecar: list[pa.Table] = []

    def add(self, keys: list[str], rows: pa.Table, images: list[bytes]) -> None:
        metadata = rows.select(self._columns)
        prompts = rows.column(C.PROMPT).to_pylist() if C.PROMPT in rows.column_names else [None] * rows.num_rows
        for key, image, prompt, record in zip(keys, images, prompts, metadata.to_pylist()):
            self._member(f"{key}.{self._extension}", image)
            self._member(f"{key}.txt", (prompt or "").encode())
            self._member(f"{key}.json", sample_record(key, record))
        self._sidecar.append(metadata.add_column(0, KEY, pa.array(keys, pa.string())))
        self.rows += rows.num_rows

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        self._file.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
        self._file.write(data)
        if len(data) % tarfile.BLOCKSIZE:
            self._file.write(tarfile.NUL * (tarfile.BLOCKSIZE - len(data) % tarfile.BLOCKSIZE))

    def commit(self) -> dict[str, int]:
        """Publish the tar and its sidecar; returns their names and sizes."""
        # The end of the archive, as TarFile.close writes it: two empty blocks, then padding to a whole record.
        self._file.write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        if self._file.bytes % tarfile.RECORDSIZE:
            self._file.write(tarfile.NUL * (tarfile.RECORDSIZE - self._file.bytes % tarfile.RECORDSIZE))
        self._file.commit()
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.concat_tables(self._sidecar), buffer, compression="zstd")
        sidecar = storage.write_bytes(storage.join(self.dest, sidecar_name(self.shard)), buffer.getvalue().to_pybytes())
        return {tar_name(self.shard): self._file.bytes, sidecar_name(self.shard): sidecar}

    def discard(self) -> None:
        self._file.discard()
