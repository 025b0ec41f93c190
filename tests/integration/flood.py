"""A load generator for overload tests: many keep-alive connections, each sending the same request
again as soon as it has its answer (after a pause when refused), for a bounded time and count.

Stdlib only, and run as its own process (``python flood.py ...``): in the test's process it would
share the GIL with the server under test and slow it down. Prints one JSON object:
``{"results": [[status, seconds, retry_after or null, sent at], ...], "errors": [...]}`` (sent at:
seconds since the flood began); status 0 is a connection that failed or timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(status_line.split()[1]), headers, body


class Flood:
    def __init__(self, args: argparse.Namespace, body: bytes) -> None:
        self.args = args
        self.request = (
            f"POST {args.path} HTTP/1.1\r\nHost: {args.host}\r\nContent-Type: {args.content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.left = args.max_requests
        self.began = time.perf_counter()
        self.deadline = time.monotonic() + args.seconds
        self.results: list[tuple[int, float, str | None, float]] = []
        self.errors: list[str] = []

    async def connection(self) -> None:
        reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
        try:
            while self.left > 0 and time.monotonic() < self.deadline:
                self.left -= 1
                start = time.perf_counter()
                writer.write(self.request)
                try:
                    status, headers, _ = await asyncio.wait_for(read_response(reader), self.args.timeout)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    self.results.append((0, time.perf_counter() - start, None, start - self.began))
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                    return
                elapsed = time.perf_counter() - start
                self.results.append((status, elapsed, headers.get("retry-after"), start - self.began))
                if status != 200:
                    await asyncio.sleep(self.args.pause)
                if headers.get("connection", "").lower() == "close":
                    return
        finally:
            writer.close()

    async def run(self) -> None:
        outcomes = await asyncio.gather(
            *(self.connection() for _ in range(self.args.connections)), return_exceptions=True
        )
        self.errors += [f"{type(e).__name__}: {e}" for e in outcomes if isinstance(e, BaseException)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--body", required=True, help="file holding the request body")
    parser.add_argument("--connections", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=8.0, help="no new request after this")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds a refused connection waits")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    args = parser.parse_args()
    with open(args.body, "rb") as f:
        flood = Flood(args, f.read())
    asyncio.run(flood.run())
    json.dump({"results": flood.results, "errors": flood.errors}, sys.stdout)


if __name__ == "__main__":
    main()
