"""`genbatch status OUTPUT`: how a running or finished job stands, from its output folder alone.

job.json says what the job is and how its last run ended; `stats/` says which shards are done, by
whom and how fast (only this job's stats count: see `job_stats`). On a local folder, the output lock
tells a live run from one that was killed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from jobs.errors import OutputError
from jobs.jobfile import identity_key, read_job_file
from jobs.lock import lock_is_held
from workers import layout, storage
from workers.shard_stats import ShardStats, read_all_stats
from workers.writer import read_footer


@dataclass
class WorkerStatus:
    worker: str
    node_ip: str
    shards: int = 0
    generated: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.generated / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class WorkerStartup:
    """How an actor of the last run started (job.json's `workers`); None where its job.json did not say."""

    worker: str
    device: str
    load_seconds: float | None
    compile: bool | None
    compile_cache_hit: bool | None
    first_batch_seconds: float | None  # with compile on, this includes compiling
    first_image_seconds: float | None  # from the actor's start to the end of its first micro-batch

    @classmethod
    def from_record(cls, record: dict) -> WorkerStartup:
        return cls(
            worker=record.get("name", "?"),
            device=record.get("device", "?"),
            load_seconds=record.get("load_seconds"),
            compile=record.get("compile"),
            compile_cache_hit=record.get("compile_cache_hit"),
            first_batch_seconds=record.get("first_batch_seconds"),
            first_image_seconds=record.get("first_image_seconds"),
        )

    @property
    def compile_text(self) -> str:
        if self.compile is None:
            return "-"
        if not self.compile:
            return "off"
        return "on, cached" if self.compile_cache_hit else "on, compiled"


@dataclass
class JobStatus:
    output: str
    state: str  # running, finished, interrupted, failed, or "stopped" (killed before it could record its end)
    started_at: str | None
    finished_at: str | None
    rows: int
    shards: int
    shards_done: int
    rows_done: int
    ok: int
    failed: int
    images_per_s: float | None  # this run's rate so far (running) or after start-up (finished)
    eta_seconds: float | None
    workers: list[WorkerStatus] = field(default_factory=list)
    startup: list[WorkerStartup] = field(default_factory=list)  # recorded when the run ends

    def as_dict(self) -> dict:
        record = asdict(self)
        record["workers"] = [{**asdict(w), "images_per_s": round(w.images_per_s, 3)} for w in self.workers]
        return record


def job_status(output: str, now: datetime | None = None) -> JobStatus:
    record = read_job_file(output)
    if record is None:
        raise OutputError(f"{output}: no {layout.JOB_FILE} here; is this a genbatch output folder?")
    now = now or datetime.now(timezone.utc)
    stats = job_stats(output, record)
    state = record.get("status", "unknown")
    if state == "running" and not lock_is_held(output):  # (object stores: trust job.json)
        state = "stopped"
    workers: dict[str, WorkerStatus] = {}
    for shard in stats:
        worker = workers.setdefault(shard.worker, WorkerStatus(shard.worker, shard.node_ip))
        worker.shards += 1
        worker.generated += shard.generated
        worker.seconds += shard.seconds
    images_per_row = record.get("config", {}).get("generation", {}).get("images_per_prompt", 1)
    rows = record["manifest"]["rows"] * images_per_row  # output rows: one per image
    rows_done = sum(s.rows for s in stats)
    counts = record.get("counts") or {}
    if state == "running":
        rate = _rate_since(stats, record.get("resumed_at") or record["started_at"], now)
        eta = (rows - rows_done) / rate if rate else None
    else:
        rate, eta = record.get("images_per_s"), None
    return JobStatus(
        output=output,
        state=state,
        started_at=record.get("started_at"),
        finished_at=record.get("finished_at"),
        rows=rows,
        shards=record["shards"],
        shards_done=len(stats),
        rows_done=counts.get("ok", 0) + counts.get("failed", 0) if state == "finished" else rows_done,
        ok=counts["ok"] if state == "finished" else sum(s.ok for s in stats),
        failed=counts["failed"] if state == "finished" else sum(s.failed for s in stats),
        images_per_s=rate,
        eta_seconds=eta,
        workers=sorted(workers.values(), key=lambda w: w.worker),
        startup=[WorkerStartup.from_record(worker) for worker in record.get("workers") or []],
    )


def job_stats(output: str, record: dict) -> list[ShardStats]:
    """The stats of this job's shards: those of a shard it planned, written by it (their `job_key`).

    Stats from before genbatch recorded `job_key` carry none: such a file counts only while its shard's
    file in `data/` carries this job's key in its footer, so a file of another job is never counted."""
    key = identity_key(record["identity"])
    found = []
    for stats in read_all_stats(output):
        if not 0 <= stats.shard < record["shards"]:
            continue
        if stats.job_key == key or (not stats.job_key and _shard_is_this_jobs(output, stats.shard, key)):
            found.append(stats)
    return found


def _shard_is_this_jobs(output: str, shard: int, key: str) -> bool:
    footer = read_footer(layout.shard_path(output, shard))
    return footer is not None and footer.job_key == key and footer.shard == shard


def format_status(status: JobStatus) -> str:
    percent = 100 * status.rows_done / status.rows if status.rows else 100.0
    lines = [
        f"job:      {status.state}" + (f" (started {status.started_at})" if status.started_at else ""),
        f"rows:     {status.rows_done:,} / {status.rows:,} done ({percent:.1f}%): "
        f"{status.ok:,} ok, {status.failed:,} failed",
        f"shards:   {status.shards_done:,} / {status.shards:,} written",
    ]
    if status.images_per_s is not None:
        lines.append(f"speed:    {status.images_per_s:.2f} images/s")
    if status.eta_seconds is not None:
        lines.append(f"eta:      {_duration(status.eta_seconds)}")
    if status.finished_at:
        lines.append(f"ended:    {status.finished_at}")
    if status.workers:
        lines.append("workers:  name, node, shards, images generated, images/s while generating")
        lines += [
            f"          {w.worker}  {w.node_ip or '-'}  {w.shards}  {w.generated}  {w.images_per_s:.2f}"
            for w in status.workers
        ]
    if status.startup:
        lines.append("start-up: name, device, load s, compile, first micro-batch s, first image s")
        lines += [
            f"          {w.worker}  {w.device}  {_seconds(w.load_seconds)}  {w.compile_text}  "
            f"{_seconds(w.first_batch_seconds)}  {_seconds(w.first_image_seconds)}"
            for w in status.startup
        ]
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate_since(stats: list[ShardStats], since: str, now: datetime) -> float | None:
    """Images per second generated by this run: shards finished since it started, over the time since."""
    start = datetime.fromisoformat(since)
    generated = sum(s.generated for s in stats if datetime.fromisoformat(s.finished_at) >= start)
    elapsed = (now - start).total_seconds()
    return generated / elapsed if generated and elapsed > 0 else None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# A sweep's folder (jobs.sweep): sweep.json lists its runs, each an output folder of its own.


@dataclass
class SweepStatus:
    output: str
    runs: list[tuple[str, JobStatus | None]]  # (folder, its status); None: the run has not started

    @property
    def rows(self) -> int:
        return sum(status.rows for _, status in self.runs if status)

    @property
    def rows_done(self) -> int:
        return sum(status.rows_done for _, status in self.runs if status)

    def as_dict(self) -> dict:
        return {
            "output": self.output,
            "runs": [
                {"folder": folder, **(status.as_dict() if status else {"state": "pending"})}
                for folder, status in self.runs
            ],
            "rows": self.rows,
            "rows_done": self.rows_done,
            "ok": sum(status.ok for _, status in self.runs if status),
            "failed": sum(status.failed for _, status in self.runs if status),
        }


def is_sweep_folder(output: str) -> bool:
    return storage.exists(layout.sweep_file(output)) and not storage.exists(layout.job_file(output))


def sweep_status(output: str, now: datetime | None = None) -> SweepStatus:
    from jobs.sweep_plan import read_sweep_file

    record = read_sweep_file(output) or {"runs": []}
    runs: list[tuple[str, JobStatus | None]] = []
    for run in record["runs"]:
        folder = storage.join(output, run["folder"])
        runs.append((run["folder"], job_status(folder, now) if storage.exists(layout.job_file(folder)) else None))
    return SweepStatus(output, runs)


def format_sweep_status(status: SweepStatus) -> str:
    """One line per run (state, rows done, ok, failed, images/s), then the total."""
    width = max((len(folder) for folder, _ in status.runs), default=0)
    lines = [
        f"sweep:    {len(status.runs)} runs in {status.output}",
        "runs:     folder, state, rows done, ok, failed, images/s",
    ]
    for folder, run in status.runs:
        if run is None:
            lines.append(f"          {folder:<{width}}  pending")
            continue
        speed = "-" if run.images_per_s is None else f"{run.images_per_s:.2f}"
        done = f"{run.rows_done:,} / {run.rows:,}"
        lines.append(f"          {folder:<{width}}  {run.state}  {done}  {run.ok:,}  {run.failed:,}  {speed}")
    states = Counter(run.state if run else "pending" for _, run in status.runs)
    percent = 100 * status.rows_done / status.rows if status.rows else 100.0
    ok = sum(run.ok for _, run in status.runs if run)
    failed = sum(run.failed for _, run in status.runs if run)
    lines.append(
        f"total:    {status.rows_done:,} / {status.rows:,} rows done ({percent:.1f}%): {ok:,} ok, {failed:,} failed; "
        + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    )
    return "\n".join(lines)
