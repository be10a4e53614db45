"""A leaderboard's plots as PNG bytes: each score against each setting the runs differ in, and the
quality/speed trade-off (mean CLIP score against images/s, with its Pareto front)."""

from __future__ import annotations

import base64
import io

ACCENT, MUTED, INK = "#3b6ea5", "#9aa5b4", "#1d2330"
PARETO_FILE = "pareto.png"
MAX_LINES = 12  # more settings combinations than this per plot would be unreadable: beyond it, points only


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def short_names(keys: list[str]) -> dict[str, str]:
    """`generation.guidance_scale` -> `guidance_scale`, unless two keys end alike (then the whole key)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}


def settings_text(settings: dict, names: dict[str, str]) -> str:
    return ", ".join(f"{names.get(key, key)}={value}" for key, value in settings.items())


def plot_file(key: str) -> str:
    return f"by-{key}.png"


def leaderboard_plots(rankings: dict, keys: list[str], front: list[int]) -> dict[str, bytes]:
    """`{file name: PNG}`: one plot per differing setting (a panel per score), and the Pareto plot."""
    figures = {}
    for key in keys:
        figures[plot_file(key)] = score_by_setting(rankings, key, keys)
    clip = next(iter(rankings.values()))["runs"]
    if any(entry["images_per_s"] is not None for entry in clip):
        figures[PARETO_FILE] = pareto_plot(clip, front)
    return figures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _order(values: tuple) -> tuple:
    """Sort settings values naturally: numbers by value (3.0 before 10.0), then the rest as text."""
    return tuple((0, value, "") if _is_number(value) else (1, 0, str(value)) for value in values)


def score_by_setting(rankings: dict, key: str, keys: list[str]) -> bytes:
    """Mean score (95% CI bars) against `key`, one line per combination of the other differing settings."""
    plt = _pyplot()
    names = short_names(keys)
    others = [k for k in keys if k != key]
    scores = list(rankings)
    figure, axes_list = plt.subplots(
        1,
        len(scores),
        figsize=(5.2 * len(scores) + (2.2 if others else 0), 3.8),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    for axes, score in zip(axes_list[0], scores):
        runs = rankings[score]["runs"]
        values = [entry["settings"][key] for entry in runs]
        numeric = all(_is_number(v) for v in values)
        categories = sorted({str(v) for v in values})
        lines: dict[tuple, list[dict]] = {}
        for entry in runs:
            lines.setdefault(tuple(entry["settings"][k] for k in others), []).append(entry)
        colours = plt.get_cmap("tab10" if len(lines) <= 10 else "tab20")
        # Lines side by side, a little apart, so that their interval bars do not hide each other.
        span = (max(values) - min(values) or 1) if numeric else 1
        step = 0.012 * span if numeric else min(0.08, 0.5 / max(1, len(lines)))
        for number, (combination, entries) in enumerate(sorted(lines.items(), key=lambda item: _order(item[0]))):
            offset = (number - (len(lines) - 1) / 2) * step
            entries.sort(key=lambda e: e["settings"][key] if numeric else categories.index(str(e["settings"][key])))
            xs = [
                (e["settings"][key] if numeric else categories.index(str(e["settings"][key]))) + offset for e in entries
            ]
            ys = [e["mean"] for e in entries]
            low = [e["mean"] - e["ci95"][0] for e in entries]
            high = [e["ci95"][1] - e["mean"] for e in entries]
            label = ", ".join(f"{names[k]}={v}" for k, v in zip(others, combination)) or None
            axes.errorbar(
                xs,
                ys,
                yerr=[low, high],
                marker="o",
                markersize=4,
                capsize=3,
                linewidth=1.5,
                linestyle="-" if len(lines) <= MAX_LINES else "none",
                color=colours(number % colours.N),
                label=label,
            )
        if not numeric:
            axes.set_xticks(range(len(categories)), categories, rotation=20 if len(categories) > 4 else 0)
        axes.set_xlabel(names[key])
        axes.set_ylabel(f"mean {score}")
        axes.set_title(f"{score} by {names[key]}", fontsize=11, color=INK)
        axes.grid(alpha=0.3)
        axes.spines[["top", "right"]].set_visible(False)
    if others:
        handles, labels = axes_list[0][0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return _png(figure, plt)


def pareto_plot(runs: list[dict], front: list[int]) -> bytes:
    """Mean CLIP score (95% CI bars) against images/s; the runs no other beats on both are joined up."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7.5, 4.6), dpi=110, layout="constrained")
    for index, entry in enumerate(runs):
        if entry["images_per_s"] is None:
            continue
        on_front = index in front
        axes.errorbar(
            entry["images_per_s"],
            entry["mean"],
            yerr=[[entry["mean"] - entry["ci95"][0]], [entry["ci95"][1] - entry["mean"]]],
            marker="o",
            markersize=6 if on_front else 4,
            capsize=2,
            color=ACCENT if on_front else MUTED,
            zorder=3,
        )
        if on_front:  # only the front is named: the rest would overlap it
            axes.annotate(
                entry["name"],
                (entry["images_per_s"], entry["mean"]),
                xytext=(6, 6 if index % 2 else -11),
                textcoords="offset points",
                fontsize=7,
                color=INK,
            )
    points = sorted((runs[i]["images_per_s"], runs[i]["mean"]) for i in front)
    if len(points) > 1:
        axes.plot(*zip(*points), color=ACCENT, linewidth=1.2, linestyle="--", zorder=2)
    axes.scatter([], [], color=ACCENT, s=30, label="Pareto front (named): no other run is both faster and better")
    if len(front) < len(runs):
        axes.scatter([], [], color=MUTED, s=16, label="beaten on both by another run")
    axes.legend(loc="best", fontsize=8, frameon=False)
    axes.set_xlabel("images/s (steady state, from job.json)")
    axes.set_ylabel("mean clip_score")
    axes.set_title("Quality against speed", fontsize=11, color=INK)
    axes.grid(alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    return _png(figure, plt)


def _png(figure, plt) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
