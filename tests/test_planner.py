import os

from jobs.manifest import read_manifest
from jobs.planner import plan_shards
from tests.conftest import write_manifest


def test_shards_cover_every_row_once_in_order_without_spanning_files(tmp_path):
    write_manifest(tmp_path / "m" / "a.parquet", {"prompt": [f"a{i}" for i in range(7)]})
    write_manifest(tmp_path / "m" / "b.parquet", {"prompt": [f"b{i}" for i in range(3)]})
    shards = plan_shards(read_manifest(str(tmp_path / "m")), shard_size=3)
    a, b = os.path.abspath(tmp_path / "m" / "a.parquet"), os.path.abspath(tmp_path / "m" / "b.parquet")
    assert [(s.index, s.file, s.start, s.stop, s.first_row) for s in shards] == [
        (0, a, 0, 3, 0),
        (1, a, 3, 6, 3),
        (2, a, 6, 7, 6),
        (3, b, 0, 3, 7),
    ]


def test_planning_is_deterministic(tmp_path):
    path = write_manifest(tmp_path / "p.parquet", {"id": list(range(10)), "prompt": ["x"] * 10})
    assert plan_shards(read_manifest(str(path)), 4) == plan_shards(read_manifest(str(path)), 4)
    assert [s.rows for s in plan_shards(read_manifest(str(path)), 4)] == [4, 4, 2]
    assert all(s.has_id_column for s in plan_shards(read_manifest(str(path)), 4))
