"""Files both sides share: storage, the run-folder layout and the shard-file format."""
