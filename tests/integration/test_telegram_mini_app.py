"""The Telegram Mini App example end to end: its page in headless Chromium with a fake ``Telegram.WebApp`` holding
initData signed with the bot's token, its backend (examples/telegram-mini-app/app.py, a real process) checking
that initData and giving the user a key with a daily budget, the real sidecar holding the request to that key,
and the sealed network (proxy, a llama.cpp worker, devnet escrow) answering.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from cocoon.local import LocalNetwork, free_port
from cocoon.telegram import sign_init_data
from tests.helpers.money import start_paid_network
from tests.helpers.network import wait_for

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "telegram-mini-app"
BOT_TOKEN = "7000000001:AAE-test-token-for-the-mini-app-example"
ADA = {"id": 4242, "first_name": "Ada", "username": "ada", "language_code": "en"}


def init_data(user: dict[str, Any] = ADA, age_s: float = 0, token: str = BOT_TOKEN) -> str:
    fields = {"query_id": "AAHdF6IQAAAAAN0XohDhrOrc", "user": user, "auth_date": int(time.time() - age_s)}
    return sign_init_data(fields, token)


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = start_paid_network(tmp_path_factory.mktemp("mini-app"), workers=1, engine={"kind": "llamacpp"})
    yield net
    net.stop()


def start_backend(net: LocalNetwork, data_dir: Path, daily_budget: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [
        sys.executable, str(EXAMPLE / "app.py"), "--client-config", str(net.home / "client.toml"),
        "--port", str(port), "--daily-budget", daily_budget, "--max-tokens", "12", "--data-dir", str(data_dir),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=os.environ | {"BOT_TOKEN": BOT_TOKEN})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, "the example backend exited"
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 60, "the Mini App backend")
    return process, url


@pytest.fixture(scope="module")
def backend(network: LocalNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_backend(network, tmp_path_factory.mktemp("backend"), "0.05")
    yield url
    process.terminate()
    process.wait(20)


def key_of(net: LocalNetwork, name: str) -> dict[str, Any]:
    config = str(net.home / "client.toml")
    command = [sys.executable, "-m", "cocoon", "client", "keys", "list", "--json", "--config", config]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    key: dict[str, Any] = next(k for k in json.loads(done.stdout) if k["name"] == name)
    return key


def chat(url: str, authorization: str | None, text: str = "Say hello") -> httpx.Response:
    headers = {"authorization": authorization} if authorization is not None else {}
    body = {"messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/api/chat", json=body, headers=headers, timeout=120)


def test_the_page_in_chromium_streams_an_answer_paid_from_the_users_daily_key(
    network: LocalNetwork, backend: str, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on PATH: .ci/run installs Debian's chromium package")
    from playwright.sync_api import sync_playwright

    webapp = f"initData: {json.dumps(init_data())}, initDataUnsafe: {{ user: {json.dumps(ADA)} }}, themeParams: {{}}"
    fake_telegram = (
        f"window.Telegram = {{ WebApp: {{ {webapp}, ready() {{ window.telegramReady = true; }}, expand() {{}} }} }};"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            # Telegram's script is the only thing the page loads from elsewhere; the test stands in for it.
            page.route(
                "https://telegram.org/**",
                lambda route: route.fulfill(status=200, content_type="application/javascript", body=fake_telegram),
            )
            page.goto(backend + "/")
            assert "Hi Ada!" in page.text_content("#hello")
            page.fill("#prompt", "Name a colour of the rainbow.")
            page.click("#send")
            page.wait_for_selector(".assistant[data-state=done]", timeout=120_000)
            answer = page.text_content(".assistant")
            screenshot = tmp_path / "telegram-mini-app.png"
            page.screenshot(path=str(screenshot))
            print(f"screenshot: {screenshot}")
            assert page.evaluate("window.telegramReady") is True
            assert errors == []
        finally:
            browser.close()

    assert answer and answer.strip()
    key = key_of(network, f"tg-{ADA['id']}-{datetime.now(UTC):%Y%m%d}")
    assert 0 < key["spent"] <= key["budget"] == 50_000_000 and key["models"] == ["gemma-3-270m"]


def test_a_tampered_or_stale_init_data_is_a_401_naming_the_check_and_a_huge_body_a_413(backend: str) -> None:
    forged = init_data().replace("Ada", "Eve")
    cases = {
        "empty": None,
        "hash_mismatch": f"tma {forged}",
        "stale_auth_date": f"tma {init_data(age_s=2 * 86400)}",
    }
    for check, authorization in cases.items():
        refused = chat(backend, authorization)
        assert refused.status_code == 401, refused.text
        assert check in refused.json()["check"] or check in refused.json()["error"]
    other_bot = chat(backend, f"tma {init_data(token='7000000002:AAE-another-bots-token')}")
    assert other_bot.status_code == 401 and other_bot.json()["check"] == "hash_mismatch"
    huge = httpx.post(
        f"{backend}/api/chat", content=b"x" * 100_000, headers={"authorization": f"tma {init_data()}"}, timeout=30
    )
    assert huge.status_code == 413, huge.text


def test_a_spent_daily_budget_is_a_402_the_page_can_show(network: LocalNetwork, tmp_path: Path) -> None:
    process, url = start_backend(network, tmp_path / "stingy", "0.000000001")  # one nanoton a day
    try:
        refused = chat(url, f"tma {init_data({**ADA, 'id': 777})}")
    finally:
        process.terminate()
        process.wait(20)

    assert refused.status_code == 402
    assert refused.json()["error"] == "today's budget is spent; come back tomorrow"
