"""Bridges between bus servers (bus server layer): channels carried over TCP, found by
UDP discovery; `link`, `transmitter`, `receiver`, `network`. See docs/design/bus-bridge.md.
"""

from __future__ import annotations

from postoffice.bus.bridge.network import Network, is_bridge_client

__all__ = ["Network", "is_bridge_client"]
