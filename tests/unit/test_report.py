"""Reports and comparisons, from the Parquet output alone, with figures recomputed independently."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from jobs.cli.main import main
from jobs.errors import UsageError
from jobs.report import compare
from jobs.report.render import changes_text, pvalue_text
from jobs.report.summary import build_report
from tests.helpers.images import png
from tests.helpers.runs import CATEGORIES, make_run, refusal, rescore_shard, truncate_shard


def edit_job(run, change):
    """Change a run's job.json in place, e.g. its config or the `workers` the driver records."""
    job = json.loads((run / "job.json").read_text())
    change(job)
    (run / "job.json").write_text(json.dumps(job))
    return run


@pytest.fixture
def scores():
    return [float(x) for x in np.random.default_rng(1).normal(25, 4, 90).astype(np.float32)]


def test_report_figures_match_an_independent_computation(tmp_path, scores, capsys):
    run = make_run(tmp_path / "run", scores, failed={3, 50})
    assert main(["report", str(run)]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"genbatch: report: {run / 'report' / 'report.html'} (also report.md, report.json)"
    )
    report = json.loads((run / "report" / "report.json").read_text())
    kept = np.array([s for i, s in enumerate(scores) if i not in (3, 50)], dtype=np.float32).astype(np.float64)
    assert (report["rows"], report["ok"], report["failed"]) == (90, 88, 2)
    figures = report["clip_score"]
    assert figures["n"] == 88
    assert figures["mean"] == pytest.approx(kept.mean(), abs=1e-9)
    assert figures["median"] == pytest.approx(np.median(kept), abs=1e-9)
    assert figures["std"] == pytest.approx(kept.std(ddof=1), abs=1e-9)
    assert figures["p05"] == pytest.approx(np.percentile(kept, 5), abs=1e-9)
    assert figures["p95"] == pytest.approx(np.percentile(kept, 95), abs=1e-9)
    low, high = figures["ci95"]
    assert low < kept.mean() < high and high - low < 4 * kept.std() / np.sqrt(len(kept))
    assert report["group_by"] == "category"
    for k, name in enumerate(CATEGORIES):
        members = [s for i, s in enumerate(scores) if i % 3 == k]
        scored = np.array([s for i, s in enumerate(scores) if i % 3 == k and i not in (3, 50)], np.float32)
        group = report["groups"]["category"][name]
        assert group["rows"] == len(members) and group["scored"] == len(scored)
        assert group["mean"] == pytest.approx(scored.astype(np.float64).mean(), abs=1e-9)
        assert group["median"] == pytest.approx(np.median(scored.astype(np.float64)), abs=1e-9)
        assert group["ci95"][0] < group["mean"] < group["ci95"][1]
    assert [f["id"] for f in report["failed_rows"]] == ["r000003", "r000050"]
    assert report["settings"]["model"] == "tiny" and report["settings"]["clip_model"] == "tiny"
    assert report["settings"]["images_per_s"] == 12.5 and report["settings"]["size"] == "64x64"
    assert "100 × max(cos, 0)" in report["clip_score_definition"]


def test_report_html_is_self_contained_and_shows_the_best_and_worst(tmp_path, scores):
    run = make_run(tmp_path / "run", scores, failed={7})
    assert main(["report", str(run), "-o", str(tmp_path / "out"), "--by", "category"]) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    text = re.sub(r'"data:[^"]*"', '""', html)  # the inline images themselves
    assert not re.search(r"https?:|//[a-z0-9]|href=|url\(|@import|<script|<link", text, re.I), "external reference"
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/") for s in sources)
    order = np.argsort(np.array([s if i != 7 else np.inf for i, s in enumerate(scores)]))
    best = [f"r{i:06d}" for i in order[::-1][1:13]]  # the failed row (inf) is not a score
    worst = [f"r{i:06d}" for i in order[:12]]
    assert re.findall(r'<img alt="(r\d+)"', html) == best + worst
    assert "RuntimeError: boom" in html and "100 × max(cos, 0)" in html and "<code>tiny</code>" in html
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| animals | 30 |" in markdown


def test_html_reports_escape_prompts(tmp_path, scores):
    prompts = [f"<i>cat</i> & {i}" for i in range(90)]
    run = make_run(tmp_path / "run", scores, prompts=prompts)
    other = make_run(tmp_path / "other", list(reversed(scores)), prompts=prompts)
    assert main(["report", str(run)]) == 0
    assert main(["compare", str(run), str(other), "-o", str(tmp_path / "cmp")]) == 0
    for html, tiles in ((run / "report" / "report.html", 24), (tmp_path / "cmp" / "compare.html", 16)):
        shown = re.findall(r"<br>(.*?)</figcaption>", html.read_text())
        assert len(shown) == tiles and all(re.fullmatch(r"&lt;i&gt;cat&lt;/i&gt; &amp; \d+", p) for p in shown)


def test_report_refuses_a_missing_group_column_and_a_folder_that_is_not_a_run(tmp_path, scores, capsys):
    run = make_run(tmp_path / "run", scores)
    assert main(["report", str(run), "--by", "colour"]) == 2
    assert "--by 'colour': no such column" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a genbatch run folder (no job.json)" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no such column"):  # a refusal of the request, not a bad config
        build_report(run, by="colour")


def test_compare_figures_match_an_independent_computation(tmp_path, scores, capsys):
    shifted = [s + 0.5 + 0.8 * np.sin(i) for i, s in enumerate(scores)]
    a = make_run(tmp_path / "a", scores, failed={5})
    b = make_run(tmp_path / "b", [float(np.float32(s)) for s in shifted[:80]], failed={9})
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    ids = [i for i in range(80) if i not in (5, 9)]
    sa = np.array([scores[i] for i in ids], np.float32).astype(np.float64)
    sb = np.array([shifted[i] for i in ids], np.float32).astype(np.float64)
    delta = sb - sa
    assert result["pairs"] == len(ids) == 78
    assert result["mean_delta"] == pytest.approx(delta.mean(), abs=1e-9)
    assert result["win_rate"] == pytest.approx((delta > 0).mean(), abs=1e-12)
    assert result["ci95"][0] < delta.mean() < result["ci95"][1]
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(delta).pvalue, rel=1e-9)
    wins = int((delta > 0).sum())
    assert result["sign_test_p"] == pytest.approx(stats.binomtest(wins, len(delta)).pvalue, rel=1e-9)
    assert result["unpaired_rows"] == {"a": 12, "b": 2}  # absent from the other run, or failed in either
    for k, name in enumerate(CATEGORIES):
        members = [j for j, i in enumerate(ids) if i % 3 == k]
        assert result["groups"]["category"][name]["mean_delta"] == pytest.approx(delta[members].mean(), abs=1e-9)
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert all(s.startswith("data:image/") for s in re.findall(r'src="([^"]*)"', html))
    best = [f"r{ids[j]:06d}" for j in np.argsort(delta)[::-1][:8]]
    assert re.findall(r'<img alt="B (r\d+)"', html)[:8] == best
    assert result["warnings"] == []


def test_compare_refuses_different_clip_models_and_runs_without_shared_ids(tmp_path, scores, capsys):
    a = make_run(tmp_path / "a", scores)
    b = make_run(tmp_path / "b", scores, clip_model="openai/clip-vit-large-patch14")
    assert main(["compare", str(a), str(b)]) == 2
    assert "different CLIP models ('tiny' vs 'openai/clip-vit-large-patch14'); their scores are not comparable" in (
        capsys.readouterr().err
    )
    assert not (b / "compare").exists()
    c = make_run(tmp_path / "c", scores, failed=set(range(90)))
    assert main(["compare", str(a), str(c)]) == 2
    assert "share no scored ids; nothing to compare" in capsys.readouterr().err


def test_compare_warns_when_prompts_or_seeds_differ_for_the_same_id(tmp_path, scores):
    a = make_run(tmp_path / "a", scores)
    prompts = [f"prompt {i}" if i % 10 else "something else" for i in range(90)]
    b = make_run(tmp_path / "b", scores, prompts=prompts, seeds=[i + (i == 4) for i in range(90)])
    assert main(["compare", str(a), str(b)]) == 0
    result = json.loads((b / "compare" / "compare.json").read_text())
    assert result["warnings"] == [
        "9 of 90 paired ids have a different prompt in the two runs",
        "1 of 90 paired ids have a different seed in the two runs",
    ]
    assert result["mean_delta"] == 0.0 and result["ties"] == 90 and result["wilcoxon_p"] == 1.0


def test_compare_warns_when_the_config_seed_changed_but_no_image_seed_did(tmp_path, scores):
    """A manifest with a seed column overrides the config's seed: a seed sweep over it compares nothing."""
    a = make_run(tmp_path / "a", scores)
    b = edit_job(make_run(tmp_path / "b", scores), lambda job: job["config"].update(seed=42))
    assert main(["compare", str(a), str(b)]) == 0
    result = json.loads((b / "compare" / "compare.json").read_text())
    assert result["changed_settings"] == [{"setting": "seed", "a": 0, "b": 42}]
    assert result["warnings"] == [
        "the config seeds differ (0 vs 42) but every pair was generated with the same seed: "
        "the manifest's seed column set them"
    ]
    c = edit_job(
        make_run(tmp_path / "c", scores, seeds=[i + 1000 for i in range(90)]), lambda j: j["config"].update(seed=1)
    )
    assert main(["compare", str(a), str(c)]) == 0
    assert json.loads((c / "compare" / "compare.json").read_text())["warnings"] == [
        "90 of 90 paired ids have a different seed in the two runs"
    ]


def test_compare_names_the_changed_settings_and_highlights_their_rows(tmp_path, scores):
    a = make_run(tmp_path / "a", scores)
    b = edit_job(make_run(tmp_path / "b", scores), lambda job: job["config"]["generation"].update(guidance_scale=3.0))
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["changed_settings"] == [{"setting": "guidance_scale", "a": 7.5, "b": 3.0}]
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert '<p class="changes">A → B: guidance_scale 7.5 → 3.0</p>' in html
    assert re.findall(r'<tr class="changed">(.*?)</tr>', html) == ["<th>guidance_scale</th><td>7.5</td><td>3.0</td>"]
    assert "<tr><th>steps</th><td>4</td><td>4</td></tr>" in html
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert "\nA → B: guidance_scale 7.5 → 3.0\n" in markdown
    assert "\n| **guidance_scale** | **7.5** | **3.0** |\n" in markdown and "\n| steps | 4 | 4 |\n" in markdown
    same = make_run(tmp_path / "same", scores)
    assert main(["compare", str(a), str(same)]) == 0
    assert json.loads((same / "compare" / "compare.json").read_text())["changed_settings"] == []
    assert '<p class="changes">A → B: same settings</p>' in (same / "compare" / "compare.html").read_text()
    assert "\nA → B: same settings\n" in (same / "compare" / "compare.md").read_text()


def test_changed_settings_leave_out_outcomes_and_read_as_one_line():
    a = {"run": "a", "steps": 4, "guidance_scale": 7.5, "seed": 0, "images_per_s": 9.0, "status": "finished"}
    b = {**a, "run": "b", "steps": 8, "guidance_scale": 3.0, "images_per_s": 4.5, "status": "interrupted"}
    changed = compare.changed_settings(a, b)
    assert changed == [{"setting": "steps", "a": 4, "b": 8}, {"setting": "guidance_scale", "a": 7.5, "b": 3.0}]
    assert changes_text(changed) == "steps 4 → 8; guidance_scale 7.5 → 3.0"
    assert changes_text([{"setting": "scheduler", "a": None, "b": "euler"}]) == "scheduler – → euler"
    assert changes_text([]) == "same settings"


def test_p_values_below_0_0001_read_as_a_bound():
    values = [1e-5, 0.0, 0.0123, 1e-4, 0.5, 1.0, None]
    assert [pvalue_text(p) for p in values] == ["< 0.0001", "< 0.0001", "0.0123", "0.0001", "0.5000", "1.0000", "–"]


def test_compare_shows_tiny_p_values_as_a_bound_and_a_histogram_of_the_deltas(tmp_path, scores, monkeypatch):
    drawn = {}

    def histogram_uri(values, **options):
        drawn.update(values=np.array(values), **options)
        return real_histogram_uri(values, **options)

    real_histogram_uri = compare.histogram_uri
    monkeypatch.setattr(compare, "histogram_uri", histogram_uri)
    shifted = [float(np.float32(s + 1 + 0.3 * np.sin(i))) for i, s in enumerate(scores)]
    a, b = make_run(tmp_path / "a", scores), make_run(tmp_path / "b", shifted)
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert 0 < result["wilcoxon_p"] < 1e-4 and 0 < result["sign_test_p"] < 1e-4  # the JSON keeps the numbers
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert '<div class="value">&lt; 0.0001</div><div class="note">sign test p &lt; 0.0001</div>' in html
    markdown = (tmp_path / "cmp" / "compare.md").read_text()
    assert re.search(r"\n\| 90 \|.* \| 100\.0% \| < 0\.0001 \| < 0\.0001 \|\n", markdown)
    expected = np.array(shifted, np.float32).astype(np.float64) - np.array(scores, np.float32).astype(np.float64)
    assert drawn["values"] == pytest.approx(expected, abs=1e-12)
    assert (drawn["counted"], drawn["marker"]) == ("pairs", 0.0)
    alt = re.escape("histogram of paired CLIP-score deltas (B − A)")
    match = re.search(f'<img alt="{alt}" src="data:image/png;base64,([^"]+)"', html)
    image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    assert image.format == "PNG" and image.size == (770, 286)


def test_settings_show_the_dtype_the_workers_resolved_not_auto(tmp_path, scores):
    def workers(dtype):  # as the driver records them: what each actor resolved
        return [{"name": f"worker-{i}@host", "device": "cpu", "dtype": dtype, "scheduler": "ddim"} for i in range(2)]

    a = edit_job(make_run(tmp_path / "a", scores), lambda job: job.update(workers=workers("float32")))
    assert main(["report", str(a)]) == 0
    settings = json.loads((a / "report" / "report.json").read_text())["settings"]
    assert (settings["dtype"], settings["scheduler"]) == ("float32", "ddim")  # the config says dtype: auto
    assert "<tr><th>dtype</th><td>float32</td></tr>" in (a / "report" / "report.html").read_text()
    assert "\n- dtype: float32\n" in (a / "report" / "report.md").read_text()
    b = edit_job(make_run(tmp_path / "b", scores), lambda job: job.update(workers=workers("bfloat16")))
    assert main(["compare", str(a), str(b)]) == 0
    result = json.loads((b / "compare" / "compare.json").read_text())
    assert (result["run_a"]["dtype"], result["run_b"]["dtype"]) == ("float32", "bfloat16")
    assert result["changed_settings"] == [{"setting": "dtype", "a": "float32", "b": "bfloat16"}]
    unrecorded = make_run(tmp_path / "c", scores)  # a job.json without workers: the configured value
    assert main(["report", str(unrecorded)]) == 0
    assert json.loads((unrecorded / "report" / "report.json").read_text())["settings"]["dtype"] == "auto"


@pytest.mark.slow  # 100,000 rows
def test_a_100000_row_report_streams_images_in_bounded_memory(tmp_path):
    rows, image = 100_000, png(0, size=80)
    run = make_run(tmp_path / "big", [25.0 + (i % 97) / 10 for i in range(rows)], shard_size=2_000, image=image)
    all_images_mb = rows * len(image) / 2**20
    # VmHWM, not ru_maxrss: the latter survives exec and would count this (large) test process's pages.
    probe = (
        "import re, sys; from jobs.cli.main import main; code = main(['report', sys.argv[1]]); "
        "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024); "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe, str(run)], capture_output=True, text=True, check=True)
    peak_mb = int(result.stdout.strip().splitlines()[-1])
    assert all_images_mb > 1_500  # holding every image at once would need this much
    assert peak_mb < 600, f"peak RSS {peak_mb} MB"
    print(f"report of {rows} rows: peak RSS {peak_mb} MB; all images {all_images_mb:.0f} MB")
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["rows"] == rows and report["clip_score"]["n"] == rows


# ---------------------------------------------------------------- destinations that cannot hold a report


def _under_a_file(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file" / "out", "{out}: cannot write there (a file is in its path)"


def _a_file(tmp_path):
    (tmp_path / "a-file").write_text("x")
    return tmp_path / "a-file", "{out}: not a folder; give -o a folder"


def _a_folder_named_like_the_markdown(tmp_path, name):
    (tmp_path / "out" / f"{name}.md").mkdir(parents=True)
    return tmp_path / "out", f"{{out}}/{name}.md: not a file; remove it or give -o another folder"


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize(
    "destination",
    [
        _a_file,
        _under_a_file,
        lambda tmp_path: (Path("/sys"), "{out}: cannot write there (Permission denied)"),
        lambda tmp_path: (Path("/proc"), "{out}: cannot write there (No such file or directory)"),
        "markdown is a folder",
    ],
    ids=["a file", "under a file", "/sys", "/proc", "NAME.md a folder"],
)
def test_an_unusable_report_destination_is_one_line_and_nothing_is_written(
    tmp_path, scores, capsys, command, destination
):
    a, b = make_run(tmp_path / "a", scores), make_run(tmp_path / "b", scores)
    if destination == "markdown is a folder":
        out, message = _a_folder_named_like_the_markdown(tmp_path, command)
    else:
        out, message = destination(tmp_path)
    runs = [str(a)] if command == "report" else [str(a), str(b)]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) if out.is_relative_to(tmp_path) else None
    assert main([command, *runs, "-o", str(out)]) == 2
    assert capsys.readouterr().err == "genbatch: error: " + message.format(out=out) + "\n"
    if before is not None:  # not a lone report.json, not a temporary file: nothing at all
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_report_of_a_file_or_with_run_report_a_file_is_one_line(tmp_path, scores, capsys):
    run = make_run(tmp_path / "run", scores)
    shard = run / "data" / "shard-00000.parquet"
    assert main(["report", str(shard)]) == 2
    assert (
        capsys.readouterr().err == f"genbatch: error: {shard}: a file, not a run folder; give the run's output folder\n"
    )
    (run / "report").write_text("notes")
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err == f"genbatch: error: {run / 'report'}: not a folder; give -o a folder\n"
    assert (run / "report").read_text() == "notes"


def test_a_report_whose_last_document_fails_to_write_publishes_none(tmp_path, scores, capsys, monkeypatch):
    from workers.io import storage

    run = make_run(tmp_path / "run", scores)
    write = storage.AtomicFile.write

    def full_at_the_html(self, data):
        if self.location.endswith(".html"):
            raise OSError(28, "No space left on device")
        return write(self, data)

    monkeypatch.setattr(storage.AtomicFile, "write", full_at_the_html)
    assert main(["report", str(run)]) == 2
    assert (
        capsys.readouterr().err == f"genbatch: error: {run / 'report'}: cannot write there (No space left on device)\n"
    )
    assert list((run / "report").iterdir()) == []  # no report.json alone, no temporary files


# ---------------------------------------------------------------- runs with shards that are not whole or not the job's


@pytest.mark.parametrize("damage", [truncate_shard, rescore_shard], ids=["truncated", "being rescored"])
def test_report_and_compare_refuse_a_run_with_a_shard_not_whole_or_not_its_jobs_unless_partial(
    tmp_path, scores, capsys, damage
):
    run, other = make_run(tmp_path / "run", scores, shard_size=32), make_run(tmp_path / "other", scores)
    why = damage(run)
    assert main(["report", str(run)]) == 2
    assert capsys.readouterr().err == refusal(run, why)
    assert main(["compare", str(other), str(run), "-o", str(tmp_path / "cmp")]) == 2
    assert capsys.readouterr().err == refusal(run, why)
    assert not (run / "report").exists() and not (tmp_path / "cmp").exists()

    assert main(["report", str(run), "--partial"]) == 0
    err = capsys.readouterr().err
    assert f"{run}: --partial: 1 shards left out, their rows are not read: shard-00001.parquet {why}" in err
    report = json.loads((run / "report" / "report.json").read_text())
    assert (report["rows"], report["shards_left_out"]) == (90 - 32, [f"shard-00001.parquet {why}"])
    assert "Partial (--partial): 1 shards left out" in (run / "report" / "report.md").read_text()
    assert main(["compare", str(other), str(run), "-o", str(tmp_path / "cmp"), "--partial"]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert (result["pairs"], result["shards_left_out"]) == (90 - 32, {str(run): [f"shard-00001.parquet {why}"]})
