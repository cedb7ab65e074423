"""The explorer's pages as server-rendered HTML: network (``/``), workers (``/workers``), money (``/money``).

Each page renders the dict its ``/v1/stats`` endpoint returns (``facts``), so page and JSON cannot disagree;
every value from another party goes through ``markup.esc``. No scripts: the pages work offline and refresh
themselves every 15 seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cocoon.proxy.explorer.charts import bar_chart
from cocoon.proxy.explorer.markup import Markup, join, link, stat, table, tag, ton, ton_cell

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{min-width:fit-content;background:#1d2330;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:center}
header a{color:#cfe1ff;text-decoration:none}header b{font-size:16px}
main{padding:16px 24px;max-width:1200px}h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;background:#fff;margin-bottom:8px}
th,td{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}th{background:#eef1f5}
td[data-value]{font-variant-numeric:tabular-nums}.note{color:#536072;max-width:900px}
.chart{background:#fff;border:1px solid #dde1e7}.bar{fill:#3d7be0}.axis{stroke:#8893a2}
.tick{font-size:10px;fill:#536072}.bad{color:#b3261e}code{font-size:12px}
"""
PAGES = (("/", "network"), ("/workers", "workers"), ("/money", "money"))


def layout(title: str, current: str, proxy_id: str, body: Markup) -> str:
    """A whole page: the header with the three pages' links (``current`` marked), then ``body``."""
    links = [tag("a", name, href=path, aria_current="page" if path == current else None) for path, name in PAGES]
    header = tag("header", join([tag("b", "cocoon explorer"), *links, tag("span", f"proxy {proxy_id}")]))
    head = join(
        [
            Markup('<meta charset="utf-8"><meta name="viewport" content="width=device-width">'),
            Markup('<meta http-equiv="refresh" content="15">'),
            tag("title", f"{title} · cocoon"),
            tag("style", Markup(STYLE)),
        ]
    )
    main = tag("main", join([tag("h1", title), body]))
    return "<!doctype html>" + tag("html", join([tag("head", head), tag("body", join([header, main]))]), lang="en")


def network_page(facts: dict[str, Any]) -> str:
    totals = facts["totals"]
    window = f"last {facts['window_s'] // 60} min"
    summary = table(
        ["workers online", f"requests ({window})", "requests/min", "tokens/s", "p50 TTFT", "p99 TTFT", "network"],
        [
            [
                stat("workers_online", facts["workers_online"]),
                stat("requests", totals["requests"]),
                stat("requests_per_min", totals["requests_per_min"]),
                stat("tokens_per_s", totals["tokens_per_s"]),
                stat("ttft_p50_ms", totals["ttft_p50_ms"], _ms(totals["ttft_p50_ms"])),
                stat("ttft_p99_ms", totals["ttft_p99_ms"], _ms(totals["ttft_p99_ms"])),
                facts["network"],
            ]
        ],
        id="summary",
    )
    rows = []
    for m in facts["models"]:
        prices = m.get("price_per_million")
        coefficients = m.get("price_coefficients") or []
        rows.append(
            [
                stat("model", m["model"]),
                stat("workers", m["workers"]),
                *(_price(prices, c) for c in ("prompt", "cached", "completion")),
                join((f"{c / 1000:g}×" for c in coefficients), ", ") if coefficients else "",
                stat("requests_per_min", m["requests_per_min"]),
                stat("tokens_per_s", m["tokens_per_s"]),
                _ms(m["ttft_p50_ms"]),
                _ms(m["ttft_p99_ms"]),
            ]
        )
    models = table(
        [
            "model",
            "workers",
            "prompt TON/1M",
            "cached TON/1M",
            "completion TON/1M",
            "worker coefficients",
            "requests/min",
            "tokens/s",
            "p50 TTFT",
            "p99 TTFT",
        ],
        rows,
        id="models",
    )
    minutes, days = facts["series"]["minutes"], facts["series"]["days"]
    charts = join(
        [
            tag("h2", "Requests per minute, last hour"),
            Markup(bar_chart([(_hhmm(s["t"]), s["requests"]) for s in minutes], title="requests per minute")),
            tag("h2", "Tokens per minute, last hour"),
            Markup(bar_chart([(_hhmm(s["t"]), s["tokens"]) for s in minutes], title="tokens per minute")),
            tag("h2", "Revenue by day (charged to clients), last 30 days"),
            Markup(bar_chart([(_day(s["t"]), s["charged"]) for s in days], title="revenue by day", show=_ton, every=7)),
        ]
    )
    prices_note = tag(
        "p",
        "Prices are the registry's, in TON per million tokens at coefficient 1×; a worker charges its "
        "coefficient times that. TTFT is measured by the proxy from the request's arrival to the first frame.",
        class_="note",
    )
    body = join(
        [summary, tag("h2", "Models"), models, prices_note, charts, tag("p", facts["economics"], class_="note")]
    )
    return layout("Network", "/", facts["proxy_id"], body)


def workers_page(facts: dict[str, Any]) -> str:
    rows = []
    for w in facts["workers"]:
        rep, canary, breaker = w["reputation"], w["canary"], w["breaker"]
        why = join(
            [f"{k} {rep[k]:g}" for k in ("ok", "timeout", "dropped", "bad_receipt", "error", "late") if rep.get(k)]
            + [f"breaker {breaker['state']}"]
            + ([f"condemned: {rep['condemned']}"] if rep.get("condemned") else [])
            + ([f"flagged: {w['flag']['reason']}"] if w.get("flagged") else []),
            ", ",
        )
        checks = f"{canary['status']}; {canary['checked']} checked of {canary['sent']} sent"
        if "mean_gap" in canary:
            checks += f"; mean gap {canary['mean_gap']:g}"
        earnings: Markup | str = "free proxy"
        if w.get("earnings"):
            e = w["earnings"]
            earnings = join(
                [
                    ton(e["vouchered"]) + " earned",
                    ton(e["funded"]) + " funded",
                    ton(e["claimed"]) + " claimed",
                    *([link("channel " + e["channel"][:14] + "…", e["explorer_url"])] if e["explorer_url"] else []),
                ],
                "; ",
            )
        attested = w["attested"]
        rows.append(
            [
                stat("worker_id", w["worker_id"]),
                stat("region", w["region"], w["region"] or "—"),
                ", ".join(m["model"] for m in w["models"]),
                stat("reputation", rep["factor"]),
                why,
                checks,
                earnings,
                stat("provider", attested["provider"]),
                tag("code", _short(attested["measurement"]), title=attested["measurement"]),
                stat("completed", w["completed"]),
                f"{w['free_slots']}/{w['slots']}",
            ]
        )
    body = join(
        [
            table(
                [
                    "worker",
                    "region",
                    "models",
                    "reputation",
                    "why",
                    "canaries",
                    "earnings",
                    "attestation",
                    "measurement",
                    "jobs done",
                    "slots free",
                ],
                rows,
                id="workers",
            ),
            tag(
                "p",
                "Reputation is a factor in (0, 1] from each worker's decayed evidence (successes against timeouts, "
                "drops, bad receipts, errors and late first tokens); canaries are sealed check requests re-scored "
                "on another worker of the same model. Earnings are the worker's payout channel as the books hold it.",
                class_="note",
            ),
        ]
    )
    return layout("Workers", "/workers", facts["proxy_id"], body)


def money_page(facts: dict[str, Any], proxy_id: str) -> str:
    if not facts.get("paid"):
        return layout("Money", "/money", proxy_id, tag("p", facts["economics"], class_="note"))
    totals = table(
        ["what", "amount"],
        [
            ["client payments received (revenue)", ton_cell("client_payments", facts["client_payments"])],
            ["worker earnings", ton_cell("worker_earnings", facts["worker_earnings"])],
            [f"proxy fees ({facts['proxy_fee_bps'] / 100:g}%)", ton_cell("proxy_fees", facts["proxy_fees"])],
            ["worker shares withheld (canaries)", ton_cell("worker_shares_withheld", facts["worker_shares_withheld"])],
            [
                f"deposits in {facts['client_channels']} client channels",
                ton_cell("client_deposits", facts["client_deposits"]),
            ],
        ],
        id="totals",
    )
    settled = table(
        ["", "settled on chain", "owed, not settled yet"],
        [
            [
                "clients → proxy (claims)",
                ton_cell("settled_from_clients", facts["settled_from_clients"]),
                ton_cell("owed_by_clients_unsettled", facts["owed_by_clients_unsettled"]),
            ],
            [
                "proxy → workers (funding)",
                ton_cell("funded_to_workers", facts["funded_to_workers"]),
                ton_cell("owed_to_workers_unfunded", facts["owed_to_workers_unfunded"]),
            ],
            ["workers' own claims", ton_cell("claimed_by_workers", facts["claimed_by_workers"]), ""],
        ],
        id="settlement",
    )
    workers = table(
        ["worker channel", "payout wallet", "earned (vouchered)", "funded", "claimed"],
        [
            [
                link(w["channel"], w["explorer_url"]),
                w["payout"],
                ton_cell("vouchered", w["vouchered"]),
                ton_cell("funded", w["funded"]),
                ton_cell("claimed", w["claimed"]),
            ]
            for w in facts["workers"]
        ],
        id="worker-channels",
    )
    operations = table(
        ["when (UTC)", "operation", "channel", "amount", "result"],
        [
            [
                op["at"][:19].replace("T", " "),
                op["kind"],
                link(op["channel"], op["explorer_url"]),
                ton(op["amount"]),
                "ok" if op["ok"] else tag("span", "failed: " + op["detail"], class_="bad"),
            ]
            for op in facts["operations"]
        ],
        id="operations",
    )
    receipts = ", ".join(f"{n} {status}" for status, n in sorted(facts["receipts"].items())) or "none yet"
    where = join(
        [
            "proxy wallet ",
            link(facts["proxy_wallet"], facts["proxy_wallet_url"]),
            "; registry ",
            link(facts["registry"], facts["registry_url"]),
            f"; network {facts['network']}" + ("" if facts["proxy_wallet_url"] else " (a local devnet: no explorer)"),
        ]
    )
    body = join(
        [
            tag("p", facts["economics"], class_="note", id="economics"),
            tag("p", where),
            totals,
            tag("p", f"receipts: {receipts}"),
            tag("h2", "Settled on chain vs owed"),
            settled,
            tag("h2", "Worker channels"),
            workers,
            tag("h2", "On-chain operations"),
            table(["executed on chain"], [[stat("onchain_operations", facts["onchain_operations"])]]),
            operations,
            tag("p", "Fees: " + facts["operation_fees"], class_="note"),
        ]
    )
    return layout("Money", "/money", proxy_id, body)


def _price(prices: dict[str, int] | None, kind: str) -> Markup | str:
    if not prices:
        return "free"
    return stat(f"price_{kind}", prices[kind], ton(prices[kind]))


def _short(text: str, keep: int = 16) -> str:
    """A long hex value's start, the whole of it in the cell's title."""
    return text if len(text) <= keep else text[:keep] + "…"


def _ton(nanoton: float) -> str:
    return ton(int(nanoton))


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:g} ms"


def _hhmm(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%H:%M")


def _day(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%m-%d")
