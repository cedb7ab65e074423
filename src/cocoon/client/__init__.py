"""The client role: the app developer's way in. The SDK seals each request to attested workers, checks
every chunk and receipt, and pays only what verified; the sidecar puts the OpenAI API in front of it."""

from cocoon.client.gateway import create_gateway
from cocoon.client.sdk import CocoonClient, Completion, EmbeddingEvent, TextEvent
from cocoon.client.wallet import ChannelPayer

__all__ = ["ChannelPayer", "CocoonClient", "Completion", "EmbeddingEvent", "TextEvent", "create_gateway"]
