"""The explorer in a real browser: a paid local network serves a few requests and settles once, then headless
Chromium loads each page and the numbers it shows are those of ``/v1/books``, ``/v1/directory`` and
``/v1/models``; ``cocoon status`` tells the same. A screenshot of each page is saved under the test's tmp_path.

Chromium is the system's (``apt-get install chromium``; ``.ci/run`` installs it), driven by playwright, which
never downloads a browser here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cocoon.local import LocalNetwork
from tests.helpers.money import books, mixed_requests, settle, start_paid_network

CHROMIUM = shutil.which("chromium")
REQUESTS = 8

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no `chromium` on PATH: install it with `apt-get install chromium` (see .ci/run)"
)


@pytest.fixture(scope="module")
def paid(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = start_paid_network(tmp_path_factory.mktemp("explorer"))
    mixed_requests(net, REQUESTS)
    settle(net)
    yield net
    net.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        # As root (CI containers) Chromium's sandbox cannot start; the pages are our own, from loopback.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def load(browser: Any, url: str, shot: Path) -> Any:
    """``url`` in a fresh page, its screenshot saved at ``shot``; the page stays open for reading."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    response = page.goto(url)
    assert response is not None and response.status == 200
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    return page


def shown(page: Any, name: str) -> list[str]:
    """The raw values of every cell of the page showing the fact ``name`` (``data-stat``)."""
    cells = page.locator(f'[data-stat="{name}"]')
    return [str(cells.nth(i).get_attribute("data-value")) for i in range(cells.count())]


def test_the_network_page_shows_the_models_prices_and_traffic(paid: LocalNetwork, browser: Any, tmp_path: Path) -> None:
    page = load(browser, f"{paid.proxy_url}/", tmp_path / "explorer-network.png")
    models = httpx.get(f"{paid.proxy_url}/v1/models", timeout=5).json()["data"]
    directory = httpx.get(f"{paid.proxy_url}/v1/directory", timeout=5).json()["workers"]

    assert shown(page, "workers_online") == [str(len(directory))]
    assert shown(page, "requests") == [str(REQUESTS)]
    assert shown(page, "model") == [m["id"] for m in models]
    assert shown(page, "price_prompt") == [str(m["pricing"]["prompt"]) for m in models]
    assert shown(page, "price_completion") == [str(m["pricing"]["completion"]) for m in models]
    assert page.locator("svg.chart").count() == 3
    assert "no token emissions" in page.content()


def test_the_workers_page_shows_each_worker_as_the_directory_does(
    paid: LocalNetwork, browser: Any, tmp_path: Path
) -> None:
    page = load(browser, f"{paid.proxy_url}/workers", tmp_path / "explorer-workers.png")
    directory = httpx.get(f"{paid.proxy_url}/v1/directory", timeout=5).json()["workers"]

    assert shown(page, "worker_id") == [w["worker_id"] for w in directory]
    assert shown(page, "reputation") == [str(w["reputation"]["factor"]) for w in directory]
    assert shown(page, "completed") == [str(w["completed"]) for w in directory]
    assert set(shown(page, "provider")) == {"simulated"}


def test_the_money_page_shows_the_books(paid: LocalNetwork, browser: Any, tmp_path: Path) -> None:
    page = load(browser, f"{paid.proxy_url}/money", tmp_path / "explorer-money.png")
    book = books(paid)

    assert shown(page, "client_payments") == [str(book["client_debits"])]
    assert shown(page, "worker_earnings") == [str(book["worker_credits"])]
    assert shown(page, "proxy_fees") == [str(book["proxy_fees"])]
    assert int(shown(page, "client_payments")[0]) > 0
    assert book["client_debits"] == book["worker_credits"] + book["proxy_fees"]
    assert shown(page, "settled_from_clients") == [str(sum(c["claimed"] for c in book["clients"]))]
    assert shown(page, "funded_to_workers") == [str(sum(w["funded"] for w in book["workers"]))]
    assert shown(page, "onchain_operations") == [str(book["onchain_operations"])]
    assert shown(page, "vouchered") == [str(w["vouchered"]) for w in book["workers"]]
    assert page.locator("a[href*='tonviewer']").count() == 0  # a local devnet has no block explorer
    assert "no token emissions" in page.locator("#economics").inner_text()


def test_cocoon_status_tells_the_same_as_the_pages(paid: LocalNetwork) -> None:
    command = [sys.executable, "-m", "cocoon", "status", "--proxy", paid.proxy_url]
    table = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ | {"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    print(table.stdout)
    stats = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60).stdout)
    book = books(paid)
    assert stats["money"]["client_payments"] == book["client_debits"]
    assert stats["money"]["proxy_fees"] == book["proxy_fees"]
    assert stats["totals"]["requests"] == REQUESTS
    for w in stats["workers"]:
        assert w["worker_id"] in table.stdout
    assert "client payments (revenue)" in table.stdout and "no token emissions" in table.stdout
