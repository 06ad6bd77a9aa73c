"""MkDocs hook: keep a block of a page only when the files it names exist.

A results page can include (with pymdownx.snippets, whose ``check_paths`` stays on for every
other include) a file that a long run writes later::

    <!-- if-exists: benchmarks/results/x/x.md benchmarks/results/x/x.png -->
    --8<-- "benchmarks/results/x/x.md"
    ![x](../figures/x/x.png)
    <!-- else -->
    Not run yet: `make x` writes it.
    <!-- end-if -->

Paths are relative to the folder of ``mkdocs.yml`` and separated by spaces; the block is kept
when all exist, else the ``else`` part (optional). This runs on the page's source, before the
snippets extension reads any file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_BLOCK = re.compile(
    r"^<!-- if-exists: (?P<paths>[^>]+?) -->\n(?P<then>.*?)(?:^<!-- else -->\n(?P<other>.*?))?^<!-- end-if -->\n?",
    re.DOTALL | re.MULTILINE,
)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    root = Path(config.config_file_path).parent

    def choose(match: re.Match[str]) -> str:
        present = all((root / path).is_file() for path in match["paths"].split())
        return match["then"] if present else (match["other"] or "")

    return _BLOCK.sub(choose, markdown)
