import os
from pathlib import Path

from jobs.inputs.manifest import read_manifest
from jobs.inputs.planner import plan_shards
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


def test_planning_is_deterministic_whatever_order_a_folder_lists_its_files(tmp_path, monkeypatch):
    """Resume names shard files by index: the same manifest must give the same shards in every process."""
    for name in ("c", "a", "b"):
        write_manifest(
            tmp_path / "m" / f"{name}.parquet", {"id": [f"{name}{i}" for i in range(5)], "prompt": ["x"] * 5}
        )
    listed = Path.rglob
    plans = []
    for order in (list, lambda found: list(found)[::-1]):  # as the filesystem lists them, and reversed
        monkeypatch.setattr(
            Path, "rglob", lambda self, *args, order=order, **kw: iter(order(listed(self, *args, **kw)))
        )
        plans.append(plan_shards(read_manifest(str(tmp_path / "m")), 4))
    assert plans[0] == plans[1]
    assert [(os.path.basename(s.file), s.start, s.stop, s.first_row) for s in plans[0]] == [
        ("a.parquet", 0, 4, 0),
        ("a.parquet", 4, 5, 4),
        ("b.parquet", 0, 4, 5),
        ("b.parquet", 4, 5, 9),
        ("c.parquet", 0, 4, 10),
        ("c.parquet", 4, 5, 14),
    ]
    assert [s.rows for s in plans[0]] == [4, 1, 4, 1, 4, 1] and all(s.has_id_column for s in plans[0])
