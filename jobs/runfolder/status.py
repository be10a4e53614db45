"""`genbatch status OUTPUT`: how a running or finished job stands, from its output folder alone.

job.json says what the job is and how its last run ended; `stats/` says which shards are done, by
whom and how fast (only this job's stats count: see `job_stats`). On a local folder, the output lock
tells a live run from one that was killed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TypeVar

from jobs.errors import OutputError
from jobs.runfolder.jobfile import JobRecord, WorkerRecord, read_job_file
from jobs.runfolder.lock import lock_is_held
from jobs.runfolder.shard_files import shard_file, sweep_run_folders
from jobs.runfolder.status_fields import COUNT, TEXT, Fields, is_time
from workers.io import layout, storage
from workers.io.shard_stats import ShardStats, read_all_stats

T = TypeVar("T")


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
    def from_record(cls, record: WorkerRecord) -> WorkerStartup:
        return cls(
            worker=record.name or "?",
            device=record.device or "?",
            load_seconds=record.load_seconds,
            compile=record.compile,
            compile_cache_hit=record.compile_cache_hit,
            first_batch_seconds=record.first_batch_seconds,
            first_image_seconds=record.first_image_seconds,
        )

    @property
    def compile_text(self) -> str:
        if self.compile is None:
            return "-"
        if not self.compile:
            return "off"
        return "on, cached" if self.compile_cache_hit else "on, compiled"


@dataclass(frozen=True)
class RescoreProgress:
    """A `genbatch rescore` under way, or stopped before it finished (job.json's `rescoring`)."""

    shards_rescored: int  # shards whose footer carries the new scores' job key
    interrupted: bool  # nobody holds the output lock: rerun the same rescore to finish
    started_at: str | None


@dataclass
class JobStatus:
    output: str
    # running, finished, interrupted, failed, "stopped" (killed before it could record its end), or
    # "rescoring" (the run's shards are being given new scores, or a rescore stopped half way: see `rescore`)
    state: str
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
    rescore: RescoreProgress | None = None

    @property
    def state_text(self) -> str:
        if self.rescore is None:
            return self.state
        stopped = " (interrupted)" if self.rescore.interrupted else ""
        return f"{self.state}{stopped}: {self.rescore.shards_rescored:,} / {self.shards:,} shards rescored"

    def as_dict(self) -> dict:
        record = asdict(self)
        record["workers"] = [{**asdict(w), "images_per_s": round(w.images_per_s, 3)} for w in self.workers]
        return record


def job_status(output: str, now: datetime | None = None) -> JobStatus:
    record = read_job_file(output)
    if record is None:
        raise OutputError(f"{output}: no {layout.JOB_FILE} here; is this a genbatch output folder?")
    now = now or datetime.now(timezone.utc)
    path = layout.job_file(output)
    state = record.status or "unknown"
    if state == "running" and not lock_is_held(output):  # (object stores: trust job.json)
        state = "stopped"
    # A rescore names the job key its shards get; until it ends, the run's shards carry one key or the other.
    keys = {record.key}
    rescore = None
    if record.rescoring is not None:
        keys.add(record.rescoring.job_key)
        state = "rescoring"
        rescore = RescoreProgress(
            shards_rescored=count_shards_keyed(output, record.shards, record.rescoring.job_key),
            interrupted=not lock_is_held(output),
            started_at=record.rescoring.started_at,
        )
    stats = job_stats(output, record, keys)
    workers: dict[str, WorkerStatus] = {}
    for shard in stats:
        worker = workers.setdefault(shard.worker, WorkerStatus(shard.worker, shard.node_ip))
        worker.shards += 1
        worker.generated += shard.generated
        worker.seconds += shard.seconds
    rows = _required(path, record.manifest, "manifest").rows * record.images_per_prompt(path)  # one per image
    rows_done = sum(s.rows for s in stats)
    if state == "finished":  # what the run counted when it ended
        counts = _required(path, record.counts, "counts")
        ok, failed = counts.ok, counts.failed
        rows_done = ok + failed
    else:
        ok, failed = sum(s.ok for s in stats), sum(s.failed for s in stats)
    if state == "running":
        since = record.resumed_at or _required(path, record.started_at, "started_at")
        rate = _rate_since(stats, since, now)
        eta = (rows - rows_done) / rate if rate else None
    else:
        rate, eta = record.images_per_s, None
    return JobStatus(
        output=output,
        state=state,
        started_at=record.started_at,
        finished_at=record.finished_at,
        rows=rows,
        shards=record.shards,
        shards_done=len(stats),
        rows_done=rows_done,
        ok=ok,
        failed=failed,
        images_per_s=rate,
        eta_seconds=eta,
        workers=sorted(workers.values(), key=lambda w: w.worker),
        startup=[WorkerStartup.from_record(worker) for worker in record.workers or []],
        rescore=rescore,
    )


def _required(path: str, value: T | None, key: str) -> T:
    """A field that job.json may lack, but status needs here."""
    if value is None:
        raise OutputError(f"{path}: key '{key}' is missing")
    return value


def job_stats(output: str, record: JobRecord, keys: set[str]) -> list[ShardStats]:
    """The stats of this job's shards: those of a shard it planned, written by it (their `job_key` is one of
    `keys`: the job's, and during a rescore the rescored job's too).

    Stats from before genbatch recorded `job_key` carry none: such a file counts only while its shard's
    file in `data/` carries one of the keys in its footer, so a file of another job is never counted."""
    found = []
    for stats in read_all_stats(output):
        if not 0 <= stats.shard < record.shards:
            continue
        if stats.job_key in keys or (not stats.job_key and _is_complete(output, stats.shard, keys)):
            found.append(stats)
    return found


def count_shards_keyed(output: str, shards: int, key: str) -> int:
    """How many of the job's shard files are complete under `key` (the rescored ones, during a rescore:
    the footer, not the stats file, says whether a shard has its new scores)."""
    return sum(shard_file(output, index).verified(key) is not None for index in range(shards))


def _is_complete(output: str, shard: int, keys: set[str]) -> bool:
    file = shard_file(output, shard)
    return any(file.verified(key) is not None for key in keys)


def format_status(status: JobStatus) -> str:
    percent = 100 * status.rows_done / status.rows if status.rows else 100.0
    lines = [
        f"job:      {status.state_text}" + _started(status),
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


def _started(status: JobStatus) -> str:
    if status.rescore is not None:
        return f" (rescore started {status.rescore.started_at})" if status.rescore.started_at else ""
    return f" (started {status.started_at})" if status.started_at else ""


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate_since(stats: list[ShardStats], since: str, now: datetime) -> float | None:
    """Images per second generated by this run: shards finished since it started, over the time since."""
    start = datetime.fromisoformat(since)
    generated = sum(s.generated for s in stats if _finished_since(s, start))
    elapsed = (now - start).total_seconds()
    return generated / elapsed if generated and elapsed > 0 else None


def _finished_since(stats: ShardStats, start: datetime) -> bool:
    """Whether the shard was written after `start`; a stats file with an unreadable time is not this run's."""
    return is_time(stats.finished_at) and datetime.fromisoformat(stats.finished_at) >= start


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# A sweep's folder (jobs.run.sweep): sweep.json lists its runs, each an output folder of its own.


@dataclass(frozen=True)
class SweepRunStatus:
    folder: str
    planned_rows: int | None  # its rows, as sweep.json recorded them; None in a sweep.json from before they were
    status: JobStatus | None  # None: the run has not started (its folder has no job.json)

    @property
    def state(self) -> str:
        return self.status.state if self.status else NOT_STARTED

    @property
    def rows(self) -> int | None:
        return self.status.rows if self.status else self.planned_rows

    def as_dict(self) -> dict:
        if self.status is not None:
            return {"folder": self.folder, **self.status.as_dict()}
        return {"folder": self.folder, "state": NOT_STARTED, "rows": self.rows, "rows_done": 0, "ok": 0, "failed": 0}


NOT_STARTED = "not started"


@dataclass
class SweepStatus:
    output: str
    runs: list[SweepRunStatus]

    @property
    def rows(self) -> int | None:
        """Every run's rows, the runs not started included; None where sweep.json does not say a run's."""
        rows = [run.rows for run in self.runs]
        return None if None in rows else sum(rows)  # type: ignore[arg-type]

    def _total(self, name: str) -> int:
        return sum(getattr(run.status, name) for run in self.runs if run.status)

    @property
    def rows_done(self) -> int:
        return self._total("rows_done")

    @property
    def ok(self) -> int:
        return self._total("ok")

    @property
    def failed(self) -> int:
        return self._total("failed")

    def as_dict(self) -> dict:
        return {
            "output": self.output,
            "runs": [run.as_dict() for run in self.runs],
            "rows": self.rows,
            "rows_done": self.rows_done,
            "ok": self.ok,
            "failed": self.failed,
        }


def sweep_status(output: str, now: datetime | None = None) -> SweepStatus:
    from jobs.config.sweep_plan import read_sweep_file

    sweep = read_sweep_file(output)
    # a sweep folder without sweep.json (jobs.runfolder.shard_files): its subfolders that hold a job.json
    if sweep is None:
        sweep = {"runs": [{"folder": storage.name(folder)} for folder in sweep_run_folders(output) or []]}
    record = Fields(layout.sweep_file(output), sweep)
    runs = []
    for run in record.objects("runs"):
        folder = run.get("folder", TEXT)
        location = storage.join(output, folder)
        status = job_status(location, now) if storage.exists(layout.job_file(location)) else None
        runs.append(SweepRunStatus(folder, run.get("rows", COUNT, None), status))
    return SweepStatus(output, runs)


def format_sweep_status(status: SweepStatus) -> str:
    """One line per run (state, rows done, ok, failed, images/s), then the total; a run not started counts
    its rows as not done."""
    width = max((len(run.folder) for run in status.runs), default=0)
    lines = [
        f"sweep:    {len(status.runs)} runs in {status.output}",
        "runs:     folder, state, rows done, ok, failed, images/s",
    ]
    for run in status.runs:
        job = run.status
        speed = "-" if job is None or job.images_per_s is None else f"{job.images_per_s:.2f}"
        done = f"{job.rows_done if job else 0:,} / {_rows(run.rows)}"
        ok, failed = (job.ok, job.failed) if job else (0, 0)
        state = job.state_text if job else NOT_STARTED
        lines.append(f"          {run.folder:<{width}}  {state}  {done}  {ok:,}  {failed:,}  {speed}")
    states = Counter(run.state for run in status.runs)
    rows = status.rows
    percent = "" if rows is None else f" ({100 * status.rows_done / rows if rows else 100.0:.1f}%)"
    counts = f"{status.ok:,} ok, {status.failed:,} failed"
    lines.append(
        f"total:    {status.rows_done:,} / {_rows(rows)} rows done{percent}: {counts}; "
        + ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
    )
    return "\n".join(lines)


def _rows(rows: int | None) -> str:
    return "?" if rows is None else f"{rows:,}"
