"""Load benchmark: N concurrent clients polling ``GET /jobs/{id}`` on a running API.

    python -m poisonscan.bench.load --url http://127.0.0.1:8000 --job JOB_ID \\
        --clients 50,100,200 --seconds 10

Prints, per concurrency level: requests/s, p50 and p99 latency, the status
counts (503 = back-pressure, with Retry-After) and transport errors, and how
long ``/healthz`` took while the load ran.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from poisonscan.bench.rawhttp import IDLE_EXPIRY_S, RawGet
from poisonscan.client import auth_header


@dataclass
class Result:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    healthz_s: list[float] = field(default_factory=list)
    recovery_s: float = float("nan")

    def line(self) -> str:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        ok = self.statuses.get("200", 0)
        return (
            f"clients={self.clients:4d}  req/s={len(self.latencies) / self.seconds:8.1f}  "
            f"ok/s={ok / self.seconds:8.1f}  p50={np.percentile(lat, 50):7.1f} ms  "
            f"p99={np.percentile(lat, 99):7.1f} ms  healthz_max="
            f"{max(self.healthz_s, default=float('nan')) * 1000:6.1f} ms  "
            f"recovery={self.recovery_s:5.2f} s  "
            f"statuses={dict(sorted(self.statuses.items()))}"
        )


Get = Callable[[], Awaitable[int]]
# What a failed exchange raises: httpx wraps transport errors, the raw client does not.
TRANSPORT_ERRORS = (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError)


async def _poller(get: Get, stop: float, out: Result, interval: float) -> None:
    """Poll until ``stop``, ``interval`` seconds apart (0: back to back, a closed loop)."""
    await asyncio.sleep(random.uniform(0.0, interval))  # clients do not start in step
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            out.statuses[str(await get())] += 1
        except TRANSPORT_ERRORS as exc:
            out.statuses[type(exc).__name__] += 1
        out.latencies.append(time.perf_counter() - start)
        await asyncio.sleep(interval)


async def _healthz_s(client: httpx.AsyncClient) -> float:
    start = time.perf_counter()
    with contextlib.suppress(httpx.HTTPError):
        await client.get("/healthz")
    return time.perf_counter() - start


async def _prober(client: httpx.AsyncClient, stop: float, out: Result) -> None:
    while time.monotonic() < stop:
        out.healthz_s.append(await _healthz_s(client))
        await asyncio.sleep(0.2)


async def _recovery_s(client: httpx.AsyncClient, stop: float, fast_s: float = 0.05) -> float:
    """Seconds from the end of the load until ``/healthz`` answers within ``fast_s``."""
    while await _healthz_s(client) >= fast_s:
        await asyncio.sleep(0.05)
    return max(0.0, time.monotonic() - stop)


def _getters(
    stack: contextlib.AsyncExitStack,
    url: str,
    path: str,
    clients: int,
    engine: str,
    key: str | None,
) -> list[Get]:
    """One ``get`` per poller: raw keep-alive connections, or one pooled httpx client."""
    headers = auth_header(key)
    if engine == "raw":
        raws = [RawGet(url, path, headers) for _ in range(clients)]
        for raw in raws:
            stack.push_async_callback(raw.close)
        return [raw.get for raw in raws]
    limits = httpx.Limits(
        max_connections=clients, max_keepalive_connections=clients, keepalive_expiry=IDLE_EXPIRY_S
    )
    client = httpx.AsyncClient(base_url=url, limits=limits, timeout=30.0, headers=headers)
    stack.push_async_callback(client.aclose)

    async def get() -> int:
        return (await client.get(path)).status_code

    return [get] * clients


async def run_level(
    url: str,
    path: str,
    clients: int,
    seconds: float,
    *,
    api_key: str | None = None,
    interval: float = 0.0,
    engine: str = "raw",
) -> Result:
    """``clients`` pollers for ``seconds``; a separate connection probes ``/healthz``.

    ``interval`` paces each poller (the official client polls every 0.5 s at first);
    0 polls back to back, so latency is then ``clients / throughput`` (Little's law).
    ``api_key`` (default: ``$POISONSCAN_API_KEY``) is sent by the pollers, as a client
    would. ``engine``: ``raw`` (:mod:`poisonscan.bench.rawhttp`, cheap) or ``httpx``.
    """
    out = Result(clients, seconds)
    async with (
        contextlib.AsyncExitStack() as stack,
        httpx.AsyncClient(base_url=url, timeout=30.0) as probe,
    ):
        getters = _getters(stack, url, path, clients, engine, api_key)
        stop = time.monotonic() + seconds
        tasks = [_poller(get, stop, out, interval) for get in getters]
        await asyncio.gather(*tasks, _prober(probe, stop, out))
        out.recovery_s = await _recovery_s(probe, stop)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--job", required=True, help="a job id to poll")
    parser.add_argument("--clients", default="50,100,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--interval", type=float, default=0.0, help="seconds between a poller's requests"
    )
    parser.add_argument("--api-key", default=None, help="default: $POISONSCAN_API_KEY")
    parser.add_argument("--engine", choices=("raw", "httpx"), default="raw")
    args = parser.parse_args(argv)
    options = {"api_key": args.api_key, "interval": args.interval, "engine": args.engine}
    for clients in (int(c) for c in args.clients.split(",")):
        level = run_level(args.url, f"/jobs/{args.job}", clients, args.seconds, **options)
        result = asyncio.run(level)
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
