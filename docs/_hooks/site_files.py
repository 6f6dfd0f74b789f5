"""MkDocs hook: the README as the site's home page, and the benchmark figures from results/.

* ``index.md`` is generated from README.md (links into ``docs/`` made relative to the site), so
  the front door has one source.
* The benchmarks write their plots to results/*.png (the README shows them from there), so the
  pages link them as ``../results/NAME.png`` instead of keeping a second copy under docs/.

Both join MkDocs' own file list, so ``mkdocs build --strict`` checks every link to them.
"""

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def _home_page(readme: str) -> str:
    # README links point into docs/ from the repository root; the site serves docs/ as its root.
    return re.sub(r"\]\(docs/", "](", readme)


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=_home_page((ROOT / "README.md").read_text())))
    for png in sorted((ROOT / "results").rglob("*.png")):
        path = png.relative_to(ROOT).as_posix()
        files.append(File(path, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files
