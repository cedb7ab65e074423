"""HTML building blocks for the explorer: everything is escaped unless it is ``Markup`` made here.

Worker ids, regions, model names, software strings and attestation fields are chosen by other parties, so a
value reaches a page only through ``esc`` (text and attributes alike); ``Markup`` marks the fragments this
package wrote itself, and links are only ever ``https://`` explorer URLs built in ``facts`` or relative ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from decimal import Decimal
from html import escape

from cocoon.chain import TON


class Markup(str):
    """HTML this package built; ``esc`` passes it through unchanged."""

    __slots__ = ()


class Cell(Markup):
    """A whole ``<td>`` (from ``stat``): ``table`` puts it in a row as it is."""

    __slots__ = ()


def esc(value: object) -> Markup:
    """``value`` as HTML text, quotes included (safe in attributes too); ``Markup`` unchanged, ``None`` empty."""
    if isinstance(value, Markup):
        return value
    return Markup(escape("" if value is None else str(value), quote=True))


def tag(name: str, content: object = "", **attrs: object) -> Markup:
    """``<name attrs>content</name>``, attribute values and content escaped (``class_`` → ``class``,
    ``data_x`` → ``data-x``); ``None`` attributes are left out."""
    rendered = "".join(
        f' {key.rstrip("_").replace("_", "-")}="{esc(value)}"' for key, value in attrs.items() if value is not None
    )
    return Markup(f"<{name}{rendered}>{esc(content)}</{name}>")


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(esc(sep).join(esc(p) for p in parts))


def link(text: object, href: str | None) -> Markup:
    """A link to ``href`` when it is an https or site-relative URL, else just the text."""
    if href is None or not (href.startswith("https://") or href.startswith("/")):
        return esc(text)
    return tag("a", text, href=href, rel="noopener noreferrer")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], **attrs: object) -> Markup:
    """A table: one ``<th>`` per header; each cell escaped into a ``<td>`` (a ``Cell`` is one already)."""
    head = tag("tr", join(tag("th", h) for h in headers))
    body = join(tag("tr", join(c if isinstance(c, Cell) else tag("td", c) for c in row)) for row in rows)
    return tag("table", Markup(tag("thead", head) + tag("tbody", body)), **attrs)


def stat(name: str, value: object, shown: object | None = None) -> Cell:
    """A table cell tagged with the fact it shows (``data-stat``) and its raw value (``data-value``), so a
    reader (the browser test, a scraper) can check it against the JSON."""
    return Cell(tag("td", value if shown is None else shown, data_stat=name, data_value=value))


def ton(nanoton: int) -> str:
    """``1500000000`` → ``1.5 TON``; amounts stay integers, this is display only."""
    text = f"{Decimal(nanoton) / TON:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + " TON"


def ton_cell(name: str, nanoton: int) -> Cell:
    return stat(name, nanoton, f"{ton(nanoton)} ({nanoton:,} nanoton)")
