"""A minimal HTTP/1.1 keep-alive GET over asyncio streams, for the load benchmark.

httpx costs ~4 ms of CPU per request with hundreds of pooled connections (twice
what the server spends answering), so a generator built on it measures itself.
This one costs a small fraction of that: one connection per poller, ``GET``
only, bodies framed by ``Content-Length`` (what uvicorn sends for JSON).

Idle connections are dropped after ``IDLE_EXPIRY_S``, below the server's
keep-alive timeout (uvicorn: 5 s): a request sent on a connection the server
is closing at that moment fails (a reset, or EOF before the response).
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

IDLE_EXPIRY_S = 2.0


class RawGet:
    """One keep-alive connection that GETs one path; reconnects after a close or an error."""

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.idle_since = 0.0

    async def get(self) -> int:
        """The response's status code; the connection is dropped when the server closes it."""
        if asyncio.get_running_loop().time() - self.idle_since > IDLE_EXPIRY_S:
            await self.close()
        try:
            reader, writer = self.streams or await asyncio.open_connection(self.host, self.port)
            self.streams = reader, writer
            writer.write(self.request)
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            await reader.readexactly(_content_length(head))
        except BaseException:
            await self.close()
            raise
        if "\r\nconnection: close" in head:
            await self.close()
        self.idle_since = asyncio.get_running_loop().time()
        return int(head[9:12])

    async def close(self) -> None:
        if self.streams is not None:
            writer = self.streams[1]
            self.streams = None
            writer.close()


def _content_length(head: str) -> int:
    for line in head.split("\r\n"):
        if line.startswith("content-length:"):
            return int(line.split(":", 1)[1])
    return 0
