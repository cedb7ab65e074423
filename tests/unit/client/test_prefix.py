"""Prefix hashes let the proxy route a conversation back to a warm cache without learning or linking prompts."""

from __future__ import annotations

from cocoon.client.prefix import cache_scope, prefix_hashes, prompt_text
from cocoon.protocol.messages import PREFIX_BLOCK_CHARS
from cocoon.protocol.payload import RequestPayload, SealedMessage, SealedParams

SALT_A, SALT_B = b"a" * 32, b"b" * 32
LONG = "The quick brown fox jumps over the lazy dog. " * 40


def test_a_growing_conversation_keeps_its_leading_hashes() -> None:
    first = prefix_hashes(SALT_A, "m", LONG)
    longer = prefix_hashes(SALT_A, "m", LONG + " And then it rained for a long time." * 20)
    assert len(first) == len(LONG) // PREFIX_BLOCK_CHARS
    assert longer[: len(first)] == first
    assert len(longer) > len(first)


def test_equal_prompts_of_two_clients_do_not_link() -> None:
    assert not set(prefix_hashes(SALT_A, "m", LONG)) & set(prefix_hashes(SALT_B, "m", LONG))


def test_a_prompt_shorter_than_a_block_sends_no_hash() -> None:
    assert prefix_hashes(SALT_A, "m", "hello") == []


def test_a_change_early_in_the_prompt_changes_every_later_hash() -> None:
    edited = "X" + LONG[1:]
    assert not set(prefix_hashes(SALT_A, "m", LONG)) & set(prefix_hashes(SALT_A, "m", edited))


def test_chat_roles_are_part_of_the_prefix() -> None:
    def payload(role: str) -> RequestPayload:
        return RequestPayload(
            kind="chat",
            model="m",
            salt=b"s" * 16,
            messages=[SealedMessage(role=role, content=LONG)],  # type: ignore[arg-type]
            params=SealedParams(max_tokens=1),
        )

    assert prompt_text(payload("user")) != prompt_text(payload("system"))


def test_a_cache_scope_is_the_clients_own_and_one_per_partition() -> None:
    mine, theirs = b"m" * 32, b"t" * 32
    assert cache_scope(mine) == cache_scope(mine)
    assert cache_scope(mine) != cache_scope(theirs)
    assert cache_scope(mine, "key-1") != cache_scope(mine, "key-2") != cache_scope(mine)
    assert RequestPayload(kind="chat", model="m", salt=b"s", params=SealedParams(max_tokens=1),
                          prompt="", cache_scope=cache_scope(mine)).cache_scope  # fmt: skip
