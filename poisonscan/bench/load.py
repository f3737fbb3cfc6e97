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
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class Result:
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    healthz_s: list[float] = field(default_factory=list)

    def line(self) -> str:
        lat = np.asarray(self.latencies) * 1000 if self.latencies else np.zeros(1)
        ok = self.statuses.get("200", 0)
        return (
            f"clients={self.clients:4d}  req/s={len(self.latencies) / self.seconds:8.1f}  "
            f"ok/s={ok / self.seconds:8.1f}  p50={np.percentile(lat, 50):7.1f} ms  "
            f"p99={np.percentile(lat, 99):7.1f} ms  healthz_max="
            f"{max(self.healthz_s, default=float('nan')) * 1000:6.1f} ms  "
            f"statuses={dict(sorted(self.statuses.items()))}"
        )


async def _poller(client: httpx.AsyncClient, path: str, stop: float, out: Result) -> None:
    while time.monotonic() < stop:
        start = time.perf_counter()
        try:
            resp = await client.get(path)
            out.statuses[str(resp.status_code)] += 1
        except httpx.HTTPError as exc:
            out.statuses[type(exc).__name__] += 1
        out.latencies.append(time.perf_counter() - start)


async def _prober(client: httpx.AsyncClient, stop: float, out: Result) -> None:
    while time.monotonic() < stop:
        start = time.perf_counter()
        with contextlib.suppress(httpx.HTTPError):
            await client.get("/healthz")
        out.healthz_s.append(time.perf_counter() - start)
        await asyncio.sleep(0.2)


async def run_level(url: str, path: str, clients: int, seconds: float) -> Result:
    """``clients`` pollers for ``seconds``; a separate connection probes ``/healthz``."""
    out = Result(clients, seconds)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    timeout = httpx.Timeout(30.0)
    async with (
        httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client,
        httpx.AsyncClient(base_url=url, timeout=timeout) as probe,
    ):
        stop = time.monotonic() + seconds
        tasks = [_poller(client, path, stop, out) for _ in range(clients)]
        await asyncio.gather(*tasks, _prober(probe, stop, out))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--job", required=True, help="a job id to poll")
    parser.add_argument("--clients", default="50,100,200")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    for clients in (int(c) for c in args.clients.split(",")):
        result = asyncio.run(run_level(args.url, f"/jobs/{args.job}", clients, args.seconds))
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
