"""Locations: URIs are normalised in one place, local paths are left as given."""

from __future__ import annotations

from workers.io import storage


def test_uris_lose_trailing_slashes_and_local_paths_stay_as_given():
    assert storage.normalized("s3://bucket/runs/a/") == "s3://bucket/runs/a"
    assert storage.normalized("s3://bucket/runs/a//") == "s3://bucket/runs/a"
    assert storage.normalized("s3://bucket/runs/a") == "s3://bucket/runs/a"
    assert storage.normalized("out/run/") == "out/run/"
    assert storage.normalized("file:///tmp/run/") == "file:///tmp/run/"
    assert storage.join(storage.normalized("s3://b/run/"), "job.json") == "s3://b/run/job.json"
