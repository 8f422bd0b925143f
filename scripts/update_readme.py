#!/usr/bin/env python
"""Splice generated result tables into README.md between markers, so no figure is typed by hand.

    python scripts/update_readme.py run=runs/latest/report.md storage=docs/results/storage.md

Each ``NAME=FILE`` replaces the text between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` in README.md with FILE's content (its first ``#`` heading dropped).
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecomp.io import write_text  # noqa: E402


def splice(readme: str, name: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"update_readme: README.md has no <!-- results:{name} --> block")
    body = re.sub(r"\A#[^\n]*\n+", "", body.strip() + "\n")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), readme)


def main(argv) -> int:
    readme_path = ROOT / "README.md"
    readme = readme_path.read_text()
    for arg in argv:
        name, _, file = arg.partition("=")
        if not file or not Path(file).is_file():
            raise SystemExit(f"update_readme: expected NAME=FILE with an existing file, got {arg!r}")
        readme = splice(readme, name, Path(file).read_text())
    write_text(readme_path, readme)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
