"""``report --html``: one self-contained page (no external file, no network) with the report's tables and figures.

The Markdown files the report wrote (``summary.md``, ``ablation.md``, and any protocol tables) become HTML tables;
each figure is embedded as a base64 PNG. The page sets ``data-rendered`` on ``<body>`` to the number of figures the
browser decoded, which the tests read back from a headless browser.
"""
from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from ..io import write_text

__all__ = ["markdown_to_html", "write_html_report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2), th:first-child, th:nth-child(2) { text-align: left; }
figure { display: inline-block; margin: 0.5em; } img { max-width: 560px; border: 1px solid #eee; }
.missing { color: #a40; }
"""
# Counts the figures the browser actually decoded (naturalWidth > 0): the rendering test reads it back.
_SCRIPT = """
window.addEventListener('load', function () {
  var n = 0; document.querySelectorAll('img').forEach(function (i) { if (i.naturalWidth > 0) { n++; } });
  document.body.setAttribute('data-rendered', String(n));
});
"""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def markdown_to_html(text: str) -> str:
    """The Markdown our reports write (``#`` headings, pipe tables, paragraphs, ``**bold**``) as HTML."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [r for r in block if not set(r.replace("|", "").strip()) <= set("-: ")]
            head, body = _cells(rows[0]), [_cells(r) for r in rows[1:]]
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                       + "</tbody></table>")
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line.strip())}</p>")
        i += 1
    return "\n".join(out)


def _inline(text: str) -> str:
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if k % 2 else p for k, p in enumerate(parts))


def _figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")


def write_html_report(outdir: str | Path, markdown_files: Iterable[str | Path], figures: Sequence[str | Path],
                      title: str, missing: Sequence[str] = ()) -> Path:
    """Write ``<outdir>/report.html`` from the report's Markdown files and PNG figures; return its path."""
    outdir = Path(outdir)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>Built {datetime.now(timezone.utc).isoformat(timespec='seconds')} from the result records in "
            f"{html.escape(str(outdir))}. Accuracy in %, mean ± std over seeds; hyper-parameters chosen on "
            f"validation.</p>"]
    if missing:
        body.append(f'<p class="missing">{len(missing)} planned runs have no result yet (e.g. '
                    f"{html.escape(str(missing[0]))}); the tables show the finished ones.</p>")
    for md in markdown_files:
        body.append(markdown_to_html(Path(md).read_text()))
    if figures:
        body.append("<h2>Figures</h2>" + "".join(_figure(Path(f)) for f in figures if Path(f).is_file()))
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head>\n<body data-rendered=\"0\">\n"
            + "\n".join(body) + "\n</body></html>\n")
    return write_text(outdir / "report.html", page)
