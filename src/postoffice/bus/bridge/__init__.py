"""Bridges between bus servers: channels carried over TCP, found by UDP discovery.

Bus server layer: `link` (one connection), `transmitter` and `receiver` (its two ends),
`network` (discovery, the listener, and which bridges to have). Design:
docs/design/bus-bridge.md.
"""

from __future__ import annotations

from postoffice.bus.bridge.network import Network, is_bridge_client

__all__ = ["Network", "is_bridge_client"]
