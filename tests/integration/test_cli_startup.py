"""What a `postoffice <service> serve` process imports at start: only its own service."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

# Run the CLI as a server process would, with --help so it stops after parsing.
_CODE = """
import sys
from postoffice.cli import main
try:
    main([{args}], prog_name="postoffice")
except SystemExit as stop:
    assert stop.code == 0, stop.code
top = {{m.split(".")[0] for m in sys.modules}}
sub = {{".".join(m.split(".")[:2]) for m in sys.modules if m.startswith("postoffice.")}}
print(" ".join(sorted((top | sub) & {{{watched}}})), file=sys.stderr)
"""
_WATCHED = ("postoffice.bus", "postoffice.command", "postoffice.ingest", "postoffice.office",
            "postoffice.store", "textual", "rich", "opentelemetry")  # fmt: skip


def _imported(*argv: str) -> set[str]:
    code = _CODE.format(
        args=", ".join(repr(a) for a in argv), watched=", ".join(repr(w) for w in _WATCHED)
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    return set(done.stderr.split())


@pytest.mark.parametrize(
    ("service", "allowed"),
    [
        ("command", {"postoffice.command", "postoffice.store"}),
        ("store", {"postoffice.store"}),
        ("ingest", {"postoffice.ingest"}),
    ],
)
def test_a_server_process_imports_no_other_service_nor_the_dashboard(
    service: str, allowed: set[str]
) -> None:
    assert _imported(service, "serve", "--help") == allowed
