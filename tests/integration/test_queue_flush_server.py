"""`mailserver queue flush` against a real server: it says whether one is running.

The trigger file is the only channel between the admin tool and the server, so without
a server nobody would ever act on it; the tool must say so (exit 1), not claim it asked.
"""

from __future__ import annotations

import time
from pathlib import Path

from server_harness import admin, make_server


def test_flush_tells_a_running_server_and_not_a_stopped_one(tmp_path: Path) -> None:
    server = make_server(tmp_path / "s")
    trigger = server.data_dir / "queue" / "flush"
    try:
        asked = admin(server.config_path, "queue", "flush")
        assert asked.stdout == ("queue flush: asked the running server to retry 0 pending "
                                "recipients now\n")
        deadline = time.monotonic() + 60
        while trigger.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not trigger.exists(), "the running server takes the trigger"
        # Killed, not stopped: nothing runs on the way out, yet the tool must know.
        server.kill()
        assert (server.data_dir / "run" / "listeners.json").exists()
        refused = admin(server.config_path, "queue", "flush", check=False)
        assert refused.returncode == 1
        assert refused.stdout == ""
        assert refused.stderr == (
            f"queue flush: no server is running on {server.data_dir}: the trigger "
            f"{trigger} stays, and the server retries the 0 pending recipients when it "
            "starts\n")
        assert trigger.exists()
        server.start()
        deadline = time.monotonic() + 60
        while trigger.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not trigger.exists(), "the next start takes the trigger left for it"
    finally:
        server.stop()
