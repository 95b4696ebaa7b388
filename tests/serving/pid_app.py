"""A bare ASGI app answering every request with its process id (worker tests).

``GET /busy`` blocks the worker's event loop for a second first, as a long request would.
"""

from __future__ import annotations

import os
import time

from serving.workers import pin_to_claimed_core

pin_to_claimed_core()  # as serving.main.tune_runtime does once a worker has started


async def app(scope, receive, send):
    if scope["path"] == "/busy":
        time.sleep(1.0)
    body = str(os.getpid()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
