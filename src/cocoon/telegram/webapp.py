"""Telegram's WebAppInitData, WebAppUser and WebAppChat as typed objects: what a checked ``initData`` holds.

``init_data.py`` builds them once the data passed its checks; the models here check only the JSON's shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class WebAppUser(BaseModel):
    """The Telegram user (or bot) in the ``user`` or ``receiver`` field (Telegram's WebAppUser)."""

    model_config = ConfigDict(frozen=True, strict=True)

    id: int
    first_name: str
    last_name: str | None = None
    username: str | None = None
    language_code: str | None = None
    is_bot: bool = False
    is_premium: bool = False
    added_to_attachment_menu: bool = False
    allows_write_to_pm: bool = False
    photo_url: str | None = None


class WebAppChat(BaseModel):
    """The group, supergroup or channel in the ``chat`` field (Telegram's WebAppChat)."""

    model_config = ConfigDict(frozen=True, strict=True)

    id: int
    type: str
    title: str
    username: str | None = None
    photo_url: str | None = None


@dataclass(frozen=True, slots=True)
class InitData:
    """A checked ``initData``: its typed fields, and ``fields``, every field as received (URL-decoded).

    ``fields`` keeps what the typed ones leave out: ``hash``, ``signature``, fields Telegram adds later, and the
    JSON of ``user`` / ``receiver`` / ``chat`` exactly as signed.
    """

    auth_date: datetime
    user: WebAppUser | None
    receiver: WebAppUser | None
    chat: WebAppChat | None
    query_id: str | None
    chat_type: str | None
    chat_instance: str | None
    start_param: str | None
    can_send_after: int | None
    fields: Mapping[str, str]
