"""`genbatch export`: a run's images and metadata as WebDataset tar shards or a Hugging Face imagefolder.

where.py        --where: a safe filter language, parsed with `ast` into a pyarrow expression
source.py       reading a run row group by row group: filter, dedup, then images of kept rows only
keys.py         webdataset-safe sample keys from a row's id and image index
publish.py      files written under a temporary name and published whole (local or object store)
webdataset.py   shard-NNNNNN.tar + its sidecar shard-NNNNNN.parquet
imagefolder.py  shard-NNNNNN/KEY.png ... + shard-NNNNNN/metadata.jsonl
run.py          one export, top to bottom: check, resume, stream, record stats.json
"""
