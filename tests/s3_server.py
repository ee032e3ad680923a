"""A real S3-protocol server for the tests: moto's server application in a process of its own.

Run as ``python -m tests.s3_server``: it binds a free port on 127.0.0.1, prints ``PORT <n>``
and serves until its standard input closes (so it never outlives the test session that started
it, even one that was killed).

moto checks ``If-Match`` / ``If-None-Match`` and then writes, without a lock between the two
(moto 5.2, ``S3Response.put_object``): two conditional PUTs racing on one key can both pass, and
a concurrent read-modify-write test then loses updates (measured: 199 of 200 increments with 8
threads). AWS S3 and MinIO decide such races atomically, and the store relies on that, so this
server serialises the requests that write (PUT, POST, DELETE) to give moto the same guarantee;
reads stay concurrent.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

WRITES = frozenset({"PUT", "POST", "DELETE"})


class SerializedWrites:
    """WSGI middleware running one writing request at a time (response consumed under the lock)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") not in WRITES:
            return self.app(environ, start_response)
        with self.lock:
            return list(self.app(environ, start_response))


def _exit_when_parent_goes() -> None:
    sys.stdin.read()
    os._exit(0)


def main() -> None:
    """Serve until standard input closes."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = SerializedWrites(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    threading.Thread(target=_exit_when_parent_goes, daemon=True).start()
    print(f"PORT {server.server_address[1]}", flush=True)
    # Nobody reads further: an unread pipe filling up would block the server.
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server.serve_forever()


if __name__ == "__main__":
    main()
