"""The pieces every report page is made of: its one inline style sheet, escaping, the Markdown
report's inline marks in HTML, lists, tables and the page itself (no template engine: the pages
are a few sections of tables and lists).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       margin: 0 auto; padding: 0 24px 48px; max-width: 1280px; }
h1 { font-size: 26px; margin: 24px 0 6px; } h3 { font-size: 16px; margin: 18px 0 4px; }
h2 { font-size: 20px; margin: 32px 0 8px; border-bottom: 1px solid #ddd; }
.banner { background: #fff3cd; border: 1px solid #e0c060; padding: 6px 10px; border-radius: 4px; }
.setting { color: #555; font-size: 13px; margin: 2px 0; }
.headline { font-size: 19px; margin: 14px 0 4px; } .chosen-name { font-weight: 700; color: #0b5394; }
ul.reasons li { margin: 4px 0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 4px 7px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; position: sticky; top: 0; } td:first-child, th:first-child { text-align: left; }
tr.chosen td, td.chosen-cell { background: #e8f1fb; font-weight: 600; } tr.excluded td { color: #777; }
.scroll { overflow-x: auto; max-width: 100%; }
td.worse { background: #f9d6d5; } td.better { background: #d8efd3; }
.caption { color: #555; font-size: 13px; max-width: 980px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 12px; }
.gallery figure { margin: 0; border: 1px solid #ddd; border-radius: 4px; padding: 6px; font-size: 12px; background: #fafafa; }
.gallery img { width: 128px; height: 128px; display: block; margin: 0 auto 4px; image-rendering: auto; }
.gallery .missing { width: 128px; height: 128px; margin: 0 auto 4px; display: flex; align-items: center;
                    justify-content: center; background: #eee; color: #777; text-align: center; }
.right { color: #1e7b34; } .wrong { color: #b3261e; } .path { color: #777; overflow-wrap: anywhere; }
abbr[title] { text-decoration: underline dotted; cursor: help; }
details { margin: 8px 0; } summary { cursor: pointer; font-weight: 600; }
.targets { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 12px; }
.target { border: 1px solid #ddd; border-radius: 4px; padding: 8px 12px; font-size: 13px; }
"""


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def inline(text: str) -> str:
    """One line of the Markdown report's prose in HTML: escaped, with its **bold** and `code`."""
    out = esc(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def unordered(items: Iterable[str], cls: str = "") -> str:
    body = "".join(f"<li>{inline(item)}</li>" for item in items)
    return f'<ul class="{cls}">{body}</ul>' if cls else f"<ul>{body}</ul>"


def table(header: Sequence[str], rows: Iterable[tuple[Sequence[str], str]], table_id: str) -> str:
    """Rows of (escaped cells, tr class); the cells are HTML already."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f'<tr class="{cls}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells, cls in rows)
    return f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")
