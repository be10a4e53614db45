"""The run folder: the typed job.json, a job's shard files, the resume plan, the lock and status."""
