"""The real node: asyncio peer runtime, HTTP transport and the ``gossip-node`` CLI."""
