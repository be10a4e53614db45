"""Reports on finished runs: `genbatch report` (`summary`) and `genbatch compare` (`compare`).

They read a run's output only (`runs`: its job.json and shard files, images for the few rows shown),
compute their figures (`stats`) and write JSON, Markdown and HTML (`render`, `templates/`).
"""
