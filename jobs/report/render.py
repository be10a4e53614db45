"""Turning report data into files: Jinja templates, thumbnails and a histogram as data URIs."""

from __future__ import annotations

import base64
import io
import json

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from jobs.report.documents import publish_documents

CLIP_SCORE_DEFINITION = (
    "CLIP score = 100 × max(cos, 0) per image, where cos is the cosine similarity of CLIP's projected image "
    "and text embeddings (prompts longer than the text encoder's limit are truncated keeping the end token); "
    "figures average over images. Scores are comparable only between runs scored with the same CLIP model."
)
THUMBNAIL_PX = 160
SMALLEST_P = 1e-4  # smaller p-values show as "< 0.0001"; compare.json keeps the number


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("jobs.report", "templates"),
        autoescape=select_autoescape(["html.j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda value, digits=2: "–" if value is None else f"{value:.{digits}f}"
    env.filters["pct"] = lambda value: "–" if value is None else f"{100 * value:.1f}%"
    env.filters["pvalue"] = pvalue_text
    env.filters["changes"] = changes_text
    return env


def pvalue_text(value: float | None) -> str:
    """A p-value to 4 decimals, and `< 0.0001` below that."""
    if value is None:
        return "–"
    return f"< {SMALLEST_P:.4f}" if value < SMALLEST_P else f"{value:.4f}"


def changes_text(changed: list[dict]) -> str:
    """`guidance_scale 7.5 → 3.0; steps 4 → 8` from a comparison's `changed_settings`, or `same settings`."""
    if not changed:
        return "same settings"
    return "; ".join(f"{c['setting']} {_setting_text(c['a'])} → {_setting_text(c['b'])}" for c in changed)


def _setting_text(value) -> str:
    return "–" if value is None else str(value)


def thumbnail_uri(png: bytes | None) -> str | None:
    """A small JPEG of the image as a data URI, so the report is one self-contained file."""
    if png is None:
        return None
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    if min(image.size) < THUMBNAIL_PX:  # tiny images are upscaled crisply, not blurred by the browser
        scale = THUMBNAIL_PX // max(1, min(image.size))
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def histogram_uri(
    values, label: str = "CLIP score", counted: str = "images", marker: float | None = None
) -> str | None:
    """A histogram of the values as an inline PNG data URI, with a dashed line at `marker` if given."""
    if len(values) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7, 2.6), dpi=110)
    axes.hist(values, bins=min(40, max(5, len(values) // 5)), color="#3b6ea5", edgecolor="white")
    if marker is not None:
        axes.axvline(marker, color="#5f6b7a", linestyle="--", linewidth=1)
    axes.set_xlabel(label)
    axes.set_ylabel(counted)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.spines[["top", "right"]].set_visible(False)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode("utf-8")


def write_documents(
    out: str, name: str, data: dict, context: dict, files: dict[str, bytes] | None = None, template: str | None = None
) -> str:
    """`name`.json from the data, and `name`.md / `name`.html rendered from `template`.md.j2 / .html.j2
    (default: `name`'s) with `context`, published together with `files` (plots' PNGs), all or none
    (`documents.publish_documents`).

    `out` is a local folder or an object-store prefix."""
    env = environment()
    template = template or name
    return publish_documents(
        out,
        {
            **(files or {}),
            f"{name}.json": json_bytes(data),
            f"{name}.md": env.get_template(f"{template}.md.j2").render(context).encode("utf-8"),
            f"{name}.html": env.get_template(f"{template}.html.j2").render(context).encode("utf-8"),
        },
    )
