"""Takes the docs' screenshots (docs/images/*.png) with headless Chromium.

    python docs/screenshots.py              # the tiny demo's report, compare and leaderboard pages, and the docs site
    python docs/screenshots.py --site-only  # only the docs site's pages (after `make docs`)

The report pages come from real runs of the built-in tiny model on the CPU (14 runs of 16 images: minutes on a busy
2-core machine): configs/tiny.yaml, the same at another guidance scale, and the sweep of configs/sweep-tiny.yaml, in
out/docs-screenshots/ (made afresh). Each PNG is reduced to 256 colours, so it stays well under 300 KB.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

logger = logging.getLogger("screenshots")

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images"
SITE = ROOT / "site"
WORK = Path("out/docs-screenshots")  # relative to ROOT: the pages show these short paths
WINDOW = (1280, 1600)
MARGIN = 24  # pixels kept below the last content when the page is shorter than the window
# genbatch from this checkout (not an installed copy), wherever issue 23 puts its `main`.
GENBATCH = [sys.executable, "-m", "jobs.cli.main"]


def genbatch(*args: str | Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*GENBATCH, *map(str, args)], cwd=ROOT, env=env, check=True)


def report_pages() -> dict[str, Path]:
    """Runs the tiny demo twice and the tiny sweep, and renders their pages: screenshot name -> HTML page."""
    shutil.rmtree(ROOT / WORK, ignore_errors=True)
    first, second, sweep = WORK / "tiny", WORK / "tiny-guidance-3", WORK / "sweep-tiny"
    genbatch("run", "configs/tiny.yaml", "--quiet", "--set", f"output={first}")
    genbatch("run", "configs/tiny.yaml", "--quiet", "--set", f"output={second}", "--set", "generation.guidance_scale=3")
    genbatch("run", "configs/sweep-tiny.yaml", "--quiet", "--set", f"output={sweep}")
    genbatch("report", first)
    genbatch("compare", first, second, "-o", WORK / "compare")
    genbatch("report", sweep)
    return {
        "report.png": ROOT / first / "report" / "report.html",
        "compare.png": ROOT / WORK / "compare" / "compare.html",
        "leaderboard.png": ROOT / sweep / "report" / "leaderboard.html",
    }


def site_pages() -> dict[str, Path]:
    pages = {"docs-home.png": SITE / "index.html", "docs-config.png": SITE / "reference" / "config.html"}
    missing = [str(page) for page in pages.values() if not page.is_file()]
    if missing:
        raise SystemExit(f"no {', '.join(missing)}: run `make docs` first")
    return pages


def screenshot(page: Path, png: Path) -> None:
    """`page` as Chromium renders it in a WINDOW-sized window, trimmed below its content, in 256 colours."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                "--headless",
                "--no-sandbox",  # root in a container has no user namespace for the sandbox
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WINDOW[0]},{WINDOW[1]}",
                f"--screenshot={png}",
                page.as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    image = Image.open(png).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    content = ImageChops.difference(image, background).getbbox()
    if content is not None:
        image = image.crop((0, 0, image.width, min(image.height, content[3] + MARGIN)))
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(png, optimize=True)
    logger.info("%s: %d x %d, %d KB", png.relative_to(ROOT), *image.size, png.stat().st_size // 1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-only", action="store_true", help="only the docs site's pages, not the report pages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    IMAGES.mkdir(parents=True, exist_ok=True)
    pages = {} if args.site_only else report_pages()
    for name, page in {**pages, **site_pages()}.items():
        screenshot(page, IMAGES / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
