"""The Arrow schema metadata that Hugging Face `datasets` reads, so an output folder loads as a dataset.

`datasets` looks for a `huggingface` key holding `{"info": {"features": ...}}` in a Parquet file's schema
metadata. With it, `load_dataset("parquet", data_files=...)` gives the `image` column as an `Image`
feature (decoded to PIL images on access) and every other column with its own type.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from workers.io import columns as C

logger = logging.getLogger(__name__)

HF_KEY = b"huggingface"

# Arrow type names where `datasets`' dtype name differs from Arrow's own.
_DTYPE_NAMES = {"float": "float32", "double": "float64", "halffloat": "float16", "bool": "bool"}


def hf_features(schema: pa.Schema) -> dict | None:
    """`datasets` features for `schema`, or None for a column type this does not know how to describe."""
    features = {}
    for field in schema:
        if field.name == C.IMAGE:
            features[field.name] = {"_type": "Image"}
            continue
        feature = _feature(field.type)
        if feature is None:
            logger.debug("no datasets feature for column %r (%s); writing no features", field.name, field.type)
            return None
        features[field.name] = feature
    return features


def _feature(data_type: pa.DataType) -> dict | None:
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        inner = _feature(data_type.value_type)
        return None if inner is None else {"_type": "List", "feature": inner}
    if pa.types.is_struct(data_type):
        fields = {data_type.field(i).name: _feature(data_type.field(i).type) for i in range(data_type.num_fields)}
        return None if any(value is None for value in fields.values()) else fields
    if pa.types.is_dictionary(data_type) or pa.types.is_map(data_type) or pa.types.is_union(data_type):
        return None
    if pa.types.is_timestamp(data_type):
        zone = f", tz={data_type.tz}" if data_type.tz else ""
        return {"dtype": f"timestamp[{data_type.unit}{zone}]", "_type": "Value"}
    if pa.types.is_decimal(data_type) or pa.types.is_fixed_size_binary(data_type):
        return None
    name = str(data_type)
    return {"dtype": _DTYPE_NAMES.get(name, name), "_type": "Value"}
