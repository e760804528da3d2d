"""`sandboxd shell`: the local terminal in raw mode, relayed over the terminal WebSocket."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import sys
import termios
import threading
import tty
from typing import Any
from urllib.parse import urlencode

from websockets.sync.client import connect

STDIN, OUTPUT = 0, 1


def run_shell(sandbox_id: str, command: str = "") -> int:
    base = os.environ.get("SANDBOXD_URL", "http://127.0.0.1:8080").replace("http", "ws", 1)
    key = os.environ.get("SANDBOXD_API_KEY", "")
    cols, rows = shutil.get_terminal_size()
    query = urlencode({"cols": cols, "rows": rows, "command": command})
    url = f"{base}/api/v1/sandboxes/{sandbox_id}/terminal?{query}"
    exit_code = 0
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        interactive = sys.stdin.isatty()
        saved = termios.tcgetattr(sys.stdin) if interactive else None
        if interactive:
            tty.setraw(sys.stdin)

            def on_resize(*_: Any) -> None:
                c, r = shutil.get_terminal_size()
                ws.send(json.dumps({"type": "resize", "cols": c, "rows": r}))

            signal.signal(signal.SIGWINCH, on_resize)
        stop = threading.Event()

        def pump_stdin() -> None:
            fd = sys.stdin.fileno()
            while not stop.is_set():
                ready, _, _ = select.select([fd], [], [], 0.2)
                if ready:
                    data = os.read(fd, 4096)
                    if not data:
                        ws.send(bytes([STDIN]) + b"\x04")
                        return
                    ws.send(bytes([STDIN]) + data)

        threading.Thread(target=pump_stdin, daemon=True).start()
        try:
            for message in ws:
                if isinstance(message, bytes) and message[:1] == bytes([OUTPUT]):
                    os.write(sys.stdout.fileno(), message[1:])
                elif isinstance(message, str):
                    control = json.loads(message)
                    if control.get("type") == "exit":
                        exit_code = int(control.get("exit_code") or 0)
                        break
                    if control.get("type") == "error":
                        sys.stderr.write(f"error: {control['message']}\r\n")
                        exit_code = 1
                        break
        finally:
            stop.set()
            if saved is not None:
                termios.tcsetattr(sys.stdin, termios.TCSADRAIN, saved)
    return exit_code
