"""The client role: the async SDK and the OpenAI-compatible sidecar."""

from cocoon.client.gateway import create_gateway
from cocoon.client.sdk import CocoonClient, Completion, EmbeddingEvent, TextEvent
from cocoon.client.wallet import ChannelPayer

__all__ = ["ChannelPayer", "CocoonClient", "Completion", "EmbeddingEvent", "TextEvent", "create_gateway"]
