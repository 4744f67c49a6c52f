"""`postoffice dashboard`: the Textual app watching the simulation and the services under
one data directory, in a terminal or (textual-serve) in a browser. Office layer (UI)."""

from __future__ import annotations

from postoffice.office.dashboard.app import DashboardApp
from postoffice.office.dashboard.sources import DashboardData, DataSource, LiveSource, ServiceRow

__all__ = ["DashboardApp", "DashboardData", "DataSource", "LiveSource", "ServiceRow"]
