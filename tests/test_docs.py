"""The docs: the site builds offline with its math renderer bundled, and every snippet runs.

* Site: ``mkdocs build --strict`` into a temporary folder (about 5 s on a 2-core CPU, so in the
  default suite), then no built page loads a remote script or stylesheet (a reader offline would
  get raw ``\\(d\\)`` or an unstyled page), and the KaTeX vendored in ``docs/vendor/katex`` is
  there, loaded by every page with math, with every font its CSS asks for.
* Snippets: every ```` ```python ```` block of ``README.md`` and ``docs/**/*.md`` is run, the blocks
  of one page in order in one fresh namespace, in a temporary working directory (snippets write
  ``ckpt/`` and the like). A hub model stays in the snippet as a comment with a tiny stand-in
  under it (``tensoradapt.testing.tiny_t5()``). A traceback names the markdown file and the line.

Markers, an HTML comment alone on the line right before a fence (invisible on the site):

* ``<!-- no-run: why -->``: never run (pseudo-code). Rare: prefer a ``text`` / ``pycon`` fence.
* ``<!-- needs: gpu -->``, ``<!-- needs: data -->`` (``$TENSORADAPT_T0_DATA`` or
  ``../shared/data``), or both (``<!-- needs: gpu data -->``): the page runs up to that block,
  then the test is skipped with the reason when the machine lacks it.
"""

from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
KATEX = ("vendor/katex/katex.min.js", "vendor/katex/auto-render.min.js", "javascripts/katex.js")
KATEX_CSS = "vendor/katex/katex.min.css"

# ----------------------------------------------------------------------------------- snippets

PYTHON_LANGUAGES = {"python", "py", "python3", "py3"}
NEEDS = {"gpu", "data"}
_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NO_RUN = re.compile(r"^<!--\s*no-run\b\s*:?\s*(?P<why>.*?)\s*-->$")
_NEEDS = re.compile(r"^<!--\s*needs\s*:\s*(?P<what>[\w\s,]+?)\s*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, first code line (1-based) and code (dedented)."""

    path: Path
    language: str
    line: int
    code: str
    no_run: str | None = None  # the reason, "" when none was given
    needs: frozenset[str] = frozenset()

    def label(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def _language(info: str) -> str:
    """``python``, ``python title="x.py"``, ``{ .python .annotate }`` -> ``python``."""
    info = info.strip()
    if info.startswith("{"):
        classes = re.findall(r"\.([\w+-]+)", info)
        return classes[0].lower() if classes else ""
    return info.split(maxsplit=1)[0].lower() if info else ""


def fenced_blocks(text: str, path: Path) -> list[Block]:
    """Every fenced block of a markdown text, with the marker on the line before its fence.

    A block closes at a line of the same fence character, at least as long, indented no deeper
    than the opening fence; an unclosed block runs to the end of the file, as in CommonMark.
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        previous = lines[index - 1].strip() if index else ""
        body: list[str] = []
        index += 1
        first_line = index + 1  # 1-based number of the first code line
        while index < len(lines):
            closing = _FENCE.match(lines[index])
            if (
                closing
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
                and len(closing["indent"]) <= len(indent)
            ):
                break
            line = lines[index]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            index += 1
        no_run = _NO_RUN.match(previous)
        needs = _NEEDS.match(previous)
        blocks.append(
            Block(
                path=path,
                language=_language(opening["info"]),
                line=first_line,
                code="\n".join(body) + "\n",
                no_run=no_run["why"] if no_run else None,
                needs=frozenset(re.split(r"[\s,]+", needs["what"].strip())) if needs else frozenset(),
            )
        )
        index += 1
    return blocks


def doc_pages() -> list[Path]:
    """README.md and every markdown page under docs/, but not docs/figures (a link to the markdown
    the benchmark scripts write, included by the results pages, never a page itself)."""
    pages = [REPO / "README.md"]
    for root, directories, files in os.walk(DOCS):  # os.walk does not follow the figures link
        directories[:] = sorted(d for d in directories if d != "figures")
        pages += [Path(root) / name for name in sorted(files) if name.endswith(".md")]
    return pages


def python_blocks(page: Path) -> list[Block]:
    return [block for block in fenced_blocks(page.read_text(encoding="utf-8"), page) if block.language in PYTHON_LANGUAGES]


def shared_data_dir() -> Path | None:
    """``$TENSORADAPT_T0_DATA`` or ``<repo>/../shared/data``, when it exists (as the T0 tests)."""
    candidate = os.environ.get("TENSORADAPT_T0_DATA")
    path = Path(candidate) if candidate else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def _missing(needs: frozenset[str]) -> list[str]:
    missing = []
    if "gpu" in needs:
        import torch

        if not torch.cuda.is_available():
            missing.append("a GPU")
    if "data" in needs and shared_data_dir() is None:
        missing.append("the T0 rows ($TENSORADAPT_T0_DATA or ../shared/data)")
    return missing


PAGES_WITH_SNIPPETS = [page for page in doc_pages() if python_blocks(page)]


@pytest.fixture()
def torch_state():
    """torch on one thread while a page runs; its thread count, default dtype and CPU RNG are
    restored after, so a snippet never changes the tests that follow it. The snippets' tiny
    models gain nothing from a second thread, and on a busy 2-core machine a 2-thread pool waits
    on its slowest thread at every op (a 4-beam generate: 0.2 s on one thread, 9 s on two)."""
    import torch

    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    with torch.random.fork_rng(devices=[]):
        yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=lambda page: str(page.relative_to(REPO)))
def test_snippets_run(page: Path, tmp_path, monkeypatch, torch_state):
    """The page's python blocks, in order, in one fresh namespace, in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {"__name__": "__main__"}
    for block in python_blocks(page):
        if block.no_run is not None:
            continue
        unknown = block.needs - NEEDS
        assert not unknown, f"{block.label()}: unknown needs marker {sorted(unknown)}; known: {sorted(NEEDS)}"
        missing = _missing(block.needs)
        if missing:
            pytest.skip(f"{block.label()} needs {' and '.join(missing)}; the blocks before it ran")
        # Pad with blank lines so that a traceback's line numbers are the markdown file's own.
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(block.path), "exec"), namespace)  # noqa: S102


def test_every_page_and_snippet_is_found():
    """The extractor sees the blocks (a change of fence style must not make the test above vacuous)."""
    readme = python_blocks(REPO / "README.md")
    assert len(readme) >= 2, "README.md should have its two python examples"
    assert len(PAGES_WITH_SNIPPETS) >= 5
    assert sum(len(python_blocks(page)) for page in PAGES_WITH_SNIPPETS) >= 10
    assert not any(part == "figures" for page in doc_pages() for part in page.relative_to(DOCS.parent).parts)


def test_no_run_markers_say_why():
    """An exception needs its reason, and stays rare."""
    skipped = [block for page in doc_pages() for block in python_blocks(page) if block.no_run is not None]
    assert all(block.no_run for block in skipped), [block.label() for block in skipped if not block.no_run]
    assert len(skipped) <= 3, f"too many <!-- no-run --> blocks: {[block.label() for block in skipped]}"


def test_fenced_blocks_parser():
    text = "\n".join(
        [
            "intro",
            "```python",  # 2
            "a = 1",  # 3
            "```",
            "<!-- no-run: pseudo-code -->",
            "``` { .python .annotate }",
            "b = undefined",  # 7
            "```",
            "<!-- needs: gpu data -->",
            "~~~py title=\"x.py\"",
            "c = 2",  # 11
            "~~~",
            "!!! note",
            "    ````python",
            "    d = '''",  # 15
            "    ```",
            "    '''",
            "    ````",
            "```bash",
            "make test",
            "```",
        ]
    )
    blocks = fenced_blocks(text, REPO / "x.md")
    assert [(b.language, b.line) for b in blocks] == [("python", 3), ("python", 7), ("py", 11), ("python", 15), ("bash", 20)]
    assert blocks[0].no_run is None and blocks[1].no_run == "pseudo-code"
    assert blocks[2].needs == {"gpu", "data"} and blocks[2].no_run is None
    assert blocks[3].code == "d = '''\n```\n'''\n"


# ---------------------------------------------------------------------------------------- site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as ``mkdocs build --strict`` writes it (about 5 s)."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return out


class _Resources(html.parser.HTMLParser):
    """The scripts and stylesheets a page loads, and the text of its <style> elements."""

    def __init__(self):
        super().__init__()
        self.scripts: list[str] = []
        self.links: list[tuple[str, str]] = []  # (rel, href) of stylesheets and preloads
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = {name: value or "" for name, value in attrs}
        if tag == "script" and attrs.get("src"):
            self.scripts.append(attrs["src"])
        elif tag == "link" and {"stylesheet", "preload", "modulepreload", "preconnect"} & set(attrs.get("rel", "").lower().split()):
            self.links.append((attrs.get("rel", ""), attrs.get("href", "")))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _resources(page: Path) -> _Resources:
    parser = _Resources()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser


def _remote(url: str) -> bool:
    return bool(re.match(r"^\s*(https?:)?//", url, re.IGNORECASE))


# @import url(http...), @import "http...", and url(http...) in any rule (a font, an image);
# data: URIs (which often contain "http://www.w3.org/2000/svg") do not match.
_CSS_REMOTE = re.compile(r"""(@import\s+(url\(\s*)?|url\(\s*)["']?\s*(https?:)?//""", re.IGNORECASE)


def test_site_loads_nothing_remote(site):
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 10
    found = []
    for page in pages:
        resources = _resources(page)
        found += [f"{page.relative_to(site)}: <script src={src}>" for src in resources.scripts if _remote(src)]
        found += [f"{page.relative_to(site)}: <link rel={rel} href={href}>" for rel, href in resources.links if _remote(href)]
        found += [f"{page.relative_to(site)}: <style> {m.group(0)}" for style in resources.styles for m in _CSS_REMOTE.finditer(style)]
    for sheet in sorted(site.rglob("*.css")):
        found += [f"{sheet.relative_to(site)}: {m.group(0)}" for m in _CSS_REMOTE.finditer(sheet.read_text(encoding="utf-8", errors="replace"))]
    assert not found, "the site loads from the network:\n" + "\n".join(found)


def _resolve(site: Path, page: Path, url: str) -> Path:
    return (page.parent / url.split("?")[0].split("#")[0]).resolve()


def test_math_renderer_is_bundled(site):
    """Every page with math loads the vendored KaTeX, its auto-render, the init script and the CSS."""
    math_pages = [page for page in sorted(site.rglob("*.html")) if 'class="arithmatex"' in page.read_text(encoding="utf-8")]
    assert len(math_pages) >= 3, "the concept pages have math: is pymdownx.arithmatex still on?"
    for page in math_pages:
        text = page.read_text(encoding="utf-8")
        # arithmatex's generic mode (what javascripts/katex.js renders), not MathJax script tags
        assert "\\(" in text or "\\[" in text, page
        assert 'type="math/tex' not in text, page
        resources = _resources(page)
        scripts = {_resolve(site, page, src) for src in resources.scripts}
        sheets = {_resolve(site, page, href) for rel, href in resources.links if "stylesheet" in rel}
        for needed in KATEX:
            assert (site / needed).resolve() in scripts, f"{page.relative_to(site)} does not load {needed}"
        assert (site / KATEX_CSS).resolve() in sheets, f"{page.relative_to(site)} does not load {KATEX_CSS}"
    for needed in (*KATEX, KATEX_CSS):
        assert (site / needed).stat().st_size > 0, needed
    assert b"renderMathInElement" in (site / "vendor/katex/auto-render.min.js").read_bytes()
    # katex before auto-render before the init script, as the page must run them
    order = [src.rsplit("/", 1)[-1] for src in _resources(math_pages[0]).scripts]
    positions = [order.index(name.rsplit("/", 1)[-1]) for name in KATEX]
    assert positions == sorted(positions), order


def test_katex_fonts_are_bundled(site):
    """Every .woff2 the KaTeX CSS names is in the site (the .woff / .ttf fallbacks are left out:
    browsers take the first format they support; see docs/vendor/katex/README.md)."""
    css = site / KATEX_CSS
    fonts = re.findall(r"url\(\s*['\"]?([^'\")]+\.woff2)", css.read_text(encoding="utf-8"))
    assert len(fonts) >= 20
    missing = [font for font in fonts if not (css.parent / font).is_file()]
    assert not missing, f"KaTeX fonts missing from docs/vendor/katex: {missing}"
    readme = (DOCS / "vendor/katex/README.md").read_text(encoding="utf-8")
    version = re.search(r'version:"([\d.]+)"', (site / "vendor/katex/katex.min.js").read_text(encoding="utf-8"))
    assert version and version.group(1) in readme, "docs/vendor/katex/README.md must name the vendored version"
    assert (DOCS / "vendor/katex/LICENSE").is_file()
