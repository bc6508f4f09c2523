"""Run rgd-serve in a background thread of this process on a free loopback port (tests and benchmarks)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


@contextmanager
def serve_in_background(state, host: str = "127.0.0.1", start_timeout: float = 60.0):
    """Serve `state` (app.ServerState) until the block ends, lifespan shutdown included (the scheduler stops,
    changed banks are saved). -> the base URL, e.g. http://127.0.0.1:41234."""
    import uvicorn

    from .app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))  # port 0: the OS picks a free one; uvicorn serves on this very socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="rgd-serve-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"rgd-serve did not start on {host}:{port} within {start_timeout:g} s")
            time.sleep(0.02)
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(start_timeout)
        sock.close()
