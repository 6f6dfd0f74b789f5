"""MkDocs hook: publish the benchmark figures in results/ at results/ in the site.

The benchmarks write their plots to results/*.png (the README shows them from there), so the
pages link them as ``../results/NAME.png`` instead of keeping a second copy under docs/. The
files join MkDocs' own file list, so ``mkdocs build --strict`` checks every link to them.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def on_files(files, config):
    for png in sorted((ROOT / "results").rglob("*.png")):
        path = png.relative_to(ROOT).as_posix()
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
