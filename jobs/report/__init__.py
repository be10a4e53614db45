"""Reports on finished runs: `genbatch report` (`summary`), `genbatch compare` (`compare`) and leaderboards over
N runs or a sweep folder (`leaderboard`, its statistics in `ranking`, its figures in `plots`).

They read a run's output only (`runs`: its job.json and shard files, images for the few rows shown),
compute their figures (`stats`) and write JSON, Markdown and HTML (`render`, `templates/`).
"""
