"""Small HTML pieces of the report. Every value reaches the page through `html.escape` (model text is untrusted)."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any, Iterable


def fmt(value: Any) -> str:
    """A number or value as short escaped text."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, ensure_ascii=False))
    return escape(str(value))


class Raw(str):
    """HTML already built (and escaped) here: `table` puts it into a cell as it is."""


def table(header: list[str], rows: Iterable[list[Any]], numeric: Iterable[int] = ()) -> str:
    """Cells are formatted with `fmt` (escaped) unless they are `Raw`; columns in `numeric` are right-aligned."""
    numeric = set(numeric)
    cls = lambda j: ' class="num"' if j in numeric else ""  # noqa: E731
    cell = lambda v: v if isinstance(v, Raw) else fmt(v)  # noqa: E731
    head = "".join(f"<th{cls(j)}>{escape(h)}</th>" for j, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"<td{cls(j)}>{cell(v)}</td>" for j, v in enumerate(row)) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(items: list[tuple[str, Any]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="v">{fmt(v)}</div><div class="k">{escape(k)}</div></div>'
        for k, v in items) + "</div>"


def missing(text: str) -> str:
    return f'<p class="missing">{escape(text)}</p>'


def text(value: Any) -> str:
    """Untrusted text (model output, errors), escaped, whitespace kept."""
    value = "" if value is None else value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return f'<pre class="text">{escape(value)}</pre>'


def messages(turns: Any) -> str:
    """A chat prompt; the system turn is folded away, other turns are labelled with their role."""
    if not isinstance(turns, list):
        return text(turns or "")
    parts = []
    for m in turns:
        m = m if isinstance(m, dict) else {"role": "?", "content": m}
        turn = f'<span class="role">{escape(str(m.get("role", "?")))}</span>{text(m.get("content", ""))}'
        parts.append(f"<details><summary>system prompt</summary>{turn}</details>"
                     if m.get("role") == "system" else turn)
    return '<div class="prompt">' + "".join(parts) + "</div>"


def col(title_html: str, body: str) -> str:
    return f'<div class="col"><h4>{title_html}</h4>{body}</div>'


def png(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")
