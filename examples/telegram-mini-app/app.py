"""A Telegram Mini App that chats through cocoon: the page runs inside Telegram, this backend checks who sent each
request (Telegram's signed ``initData``), gives every Telegram user their own cocoon API key with a daily budget,
and streams the answer from the client sidecar with the official ``openai`` SDK. The prompt and answer are
sealed from the sidecar to the worker; the proxy between them sees neither.

Run it against a local network (``cocoon up`` prints the client's config path)::

    BOT_TOKEN=123456:ABC... python examples/telegram-mini-app/app.py \\
        --client-config ~/.cocoon/up/client.toml --port 8090

then point your bot's Mini App at ``https://<your host>/`` (README.md: the BotFather steps; Telegram opens Mini
Apps over HTTPS only, so put a TLS proxy or tunnel in front of the port).

What it does per request (``POST /api/chat``, header ``Authorization: tma <initData>``):

1. ``cocoon.telegram.validate_init_data``: the HMAC under the bot token and ``auth_date`` freshness; a 401 names
   the check that failed.
2. The user's key for today (``tg-<user id>-<YYYYMMDD>``), made on their first request of the (UTC) day with
   ``--daily-budget`` TON, limited to ``--model`` and ``--rpm``, expiring the next day. The sidecar keeps only
   the key's hash; this backend keeps the secret in its own SQLite file (``--data-dir``), readable by it alone.
   A key's budget is held against the client's escrow deposit like every key's: once the deposit cannot back
   another user's day, new users get a 503 saying so.
3. The chat request to the sidecar under that key, streamed back to the page as server-sent events
   (``{"delta": text}`` ... ``{"done": true, "usage": {...}}``, or ``{"error": message}``). An exhausted budget
   is the sidecar's 402, passed on as "today's budget is spent".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import openai
import uvicorn
from openai.types.chat import ChatCompletionMessageParam
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cocoon.chain.pricing import parse_ton, ton_text
from cocoon.client.escrow import deposit_left
from cocoon.client.keys import KeyStore
from cocoon.config import ClientSettings
from cocoon.errors import BadRequest, CocoonError, ConfigError, PaymentRequired
from cocoon.protocol.http import read_body
from cocoon.telegram import InitData, validate_init_data

log = logging.getLogger("telegram-mini-app")
HERE = Path(__file__).resolve().parent
MAX_MESSAGES, MAX_CHARS = 32, 8000  # what one chat may send: the page keeps a short history
MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class Options:
    bot_token: str
    client: ClientSettings
    sidecar_url: str  # the sidecar's OpenAI base URL, e.g. http://127.0.0.1:8702/v1
    model: str
    daily_budget: int  # nanoton
    rpm: int
    max_tokens: int
    data_dir: Path


class UserKeys:
    """Each Telegram user's cocoon key for the day: made on first use, its secret kept here (the sidecar keeps only
    its hash). One lock per user, so two first requests at once make one key."""

    def __init__(self, options: Options) -> None:
        self._options = options
        options.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = options.data_dir / "telegram-keys.sqlite3"
        with self._db() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS user_keys (user_id INTEGER, day TEXT, name TEXT, secret TEXT, "
                "PRIMARY KEY (user_id, day))"
            )
        self._path.chmod(0o600)
        self._store = KeyStore.for_settings(options.client)
        self._locks: dict[int, asyncio.Lock] = {}

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, isolation_level=None)

    async def secret(self, user_id: int, today: date) -> str:
        async with self._locks.setdefault(user_id, asyncio.Lock()):
            found = await asyncio.to_thread(self._read, user_id, today)
            if found is not None:
                return found
            name = f"tg-{user_id}-{today:%Y%m%d}"
            tomorrow = datetime.combine(today + timedelta(days=1), time(), UTC)
            ceiling = await deposit_left(self._options.client)
            _, secret = await self._store.create(
                name,
                self._options.daily_budget,
                rpm=self._options.rpm,
                models=[self._options.model],
                expires_at=tomorrow + timedelta(minutes=10),  # a chat begun before midnight may finish
                ceiling=ceiling,
            )
            await asyncio.to_thread(self._write, user_id, today, name, secret)
            log.info("made today's key name=%s budget=%s", name, ton_text(self._options.daily_budget))
            return secret

    def _read(self, user_id: int, today: date) -> str | None:
        with self._db() as db:
            row = db.execute(
                "SELECT secret FROM user_keys WHERE user_id = ? AND day = ?", (user_id, today.isoformat())
            ).fetchone()
        return None if row is None else str(row[0])

    def _write(self, user_id: int, today: date, name: str, secret: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO user_keys VALUES (?, ?, ?, ?)", (user_id, today.isoformat(), name, secret))

    async def close(self) -> None:
        await self._store.close()


def error(status: int, message: str, check: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if check is not None:
        body["check"] = check
    return JSONResponse(body, status_code=status)


def telegram_user(request: Request, bot_token: str) -> InitData:
    """The request's ``initData``, checked; raises ``InitDataInvalid`` (401, naming the check)."""
    header = request.headers.get("authorization", "")
    scheme, _, init_data = header.partition(" ")
    return validate_init_data(init_data if scheme.lower() == "tma" else "", bot_token)


def chat_messages(body: Any) -> list[ChatCompletionMessageParam]:
    """The page's chat history, bounded: roles user and assistant, text only."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadRequest("send {'messages': [{'role': 'user', 'content': '...'}]}")
    messages = body["messages"][-MAX_MESSAGES:]
    out: list[ChatCompletionMessageParam] = []
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise BadRequest("each message needs a role (user or assistant) and a text content")
        out.append({"role": message["role"], "content": message["content"]})
    if sum(len(m["content"]) for m in messages) > MAX_CHARS:
        raise BadRequest(f"the chat is longer than {MAX_CHARS} characters; start a new one")
    return out


def make_app(options: Options) -> Starlette:
    keys = UserKeys(options)

    async def index(request: Request) -> Response:
        return FileResponse(HERE / "static" / "index.html", headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def chat(request: Request) -> Response:
        try:
            user = telegram_user(request, options.bot_token)
        except CocoonError as exc:
            return error(401, exc.message, getattr(exc, "check", None))
        if user.user is None:
            return error(401, "this initData names no user: open the app from a chat with the bot")
        try:
            # Bounded as cocoon's own servers bound bodies: a size cap and a deadline for slow senders.
            body = await read_body(request, MAX_BODY_BYTES, "chat")
            messages = chat_messages(json.loads(body))
        except CocoonError as exc:
            return error(exc.status, exc.message)
        except ValueError:
            return error(400, "the body is not JSON")
        try:
            secret = await keys.secret(user.user.id, datetime.now(UTC).date())
        except PaymentRequired:
            return error(503, "the app's deposit cannot back another user's day; try again later")
        except CocoonError as exc:
            log.warning("no key for user=%s: %s", user.user.id, exc.message)
            return error(503, f"the app cannot reach cocoon: {exc.message}")
        sdk = openai.AsyncOpenAI(base_url=options.sidecar_url, api_key=secret, max_retries=0, timeout=120)
        try:
            stream = await sdk.chat.completions.create(
                model=options.model,
                messages=messages,
                max_tokens=options.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                user=f"tg-{user.user.id}",
            )
        except openai.APIStatusError as exc:
            await sdk.close()
            if exc.status_code == 402:
                return error(402, "today's budget is spent; come back tomorrow")
            if exc.status_code == 429:
                return error(429, "slow down a little: too many messages a minute")
            return error(502, f"cocoon answered {exc.status_code}: {exc.message}")
        except openai.APIError as exc:
            await sdk.close()
            return error(502, f"cannot reach cocoon: {exc}")

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield _event({"delta": chunk.choices[0].delta.content})
                    if chunk.usage is not None:
                        used = chunk.usage
                        usage = {"prompt_tokens": used.prompt_tokens, "completion_tokens": used.completion_tokens}
                        yield _event({"done": True, "usage": usage})
            except openai.APIError as exc:
                yield _event({"error": f"the answer broke off: {exc}"})
            finally:
                await sdk.close()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await keys.close()

    routes = [Route("/", index), Route("/healthz", healthz), Route("/api/chat", chat, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _nanoton(text: str) -> int:
    try:
        return parse_ton(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client-config", type=Path, required=True, help="the sidecar's client.toml")
    parser.add_argument("--sidecar-url", help="its OpenAI base URL (default: from the client config)")
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--daily-budget", type=_nanoton, default=_nanoton("0.05"), help="TON per user per day")
    parser.add_argument("--rpm", type=int, default=20, help="messages a minute per user")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cocoon" / "telegram-mini-app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090, help="(cocoon up's sidecar has 8080)")
    args = parser.parse_args()
    bot_token = os.environ.get("BOT_TOKEN", "")
    if not bot_token:
        parser.error("set BOT_TOKEN to your bot's token (from @BotFather): initData is checked with it")
    client = ClientSettings.load(args.client_config)
    options = Options(
        bot_token=bot_token,
        client=client,
        sidecar_url=args.sidecar_url or f"http://{client.host}:{client.port}/v1",
        model=args.model,
        daily_budget=args.daily_budget,
        rpm=args.rpm,
        max_tokens=args.max_tokens,
        data_dir=args.data_dir,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(make_app(options), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
