"""Load test of the search service on loopback: latency percentiles and errors under concurrent clients.

    python scripts/load_test.py --index INDEX_DIR [--clients 16] [--requests 40]

Starts `mmd2v2 serve`'s application on a free loopback port (or targets --url), sends a bounded number of text
searches (and every fourth request an image upload) from 1 client and from --clients concurrent clients, with
query batching off (the baseline: one model forward per request) and on, and prints p50/p99 latency, throughput
and the number of errors (anything but HTTP 200). With --url only the running service is measured.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUERIES = [
    "small red circle at top left",
    "large blue square",
    "two green crosses",
    "a purple triangle left of a yellow circle",
    "three objects",
    "large cyan cross at bottom right and small red square",
]


def _query_image() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def one_request(url: str, number: int, image: bytes, k: int) -> tuple[float, bool]:
    """Send request `number` (a text search, every fourth an upload); returns (seconds, succeeded)."""
    if number % 4 == 3:
        boundary = uuid.uuid4().hex
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n--{boundary}\r\n'
            f'Content-Disposition: form-data; name="image"; filename="q.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        body += image + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(
            f"{url}/api/search/image", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
    else:
        payload = json.dumps({"text": QUERIES[number % len(QUERIES)], "k": k}).encode()
        request = urllib.request.Request(f"{url}/api/search/text", payload, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            ok = response.status == 200 and bool(json.loads(response.read())["hits"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        ok = False
    return time.perf_counter() - start, ok


def run_load(url: str, clients: int, requests: int, k: int) -> dict[str, float]:
    """`requests` requests spread over `clients` threads; latency percentiles (ms), throughput and errors."""
    image = _query_image()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda n: one_request(url, n, image, k), range(requests)))
    wall = time.perf_counter() - start
    latencies = sorted(seconds * 1000 for seconds, _ in results)
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": requests,
        "p50 ms": quantiles[49],
        "p99 ms": quantiles[98],
        "req/s": requests / wall,
        "errors": sum(not ok for _, ok in results),
    }


def main(argv: list[str] | None = None) -> None:
    """Print the load table: 1 and --clients concurrent clients, query batching off (baseline) and on."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, help="index folder to serve in-process")
    parser.add_argument("--url", help="an already running service instead of --index")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=160, help="requests per run (bounded)")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    if (args.index is None) == (args.url is None):
        parser.error("give exactly one of --index and --url")
    servers: dict[str, Any] = {}
    if args.index is not None:
        from mmd2v2.retrieval.search import Searcher
        from mmd2v2.retrieval.service import create_app, running_server

        searcher = Searcher(args.index)
        servers = {
            "off": lambda: running_server(create_app(searcher, batch_queries=False)),
            "on": lambda: running_server(create_app(searcher, batch_queries=True)),
        }
    else:
        servers = {"?": lambda: nullcontext(args.url.rstrip("/"))}
    rows = []
    for batching, server in servers.items():
        with server() as url:
            one_request(url, 0, _query_image(), args.k)  # warm-up
            for clients, requests in ((1, max(4, args.requests // 4)), (args.clients, args.requests)):
                rows.append({"batching": batching, **run_load(url, clients, requests, args.k)})
    print(f"{'batching':>8} {'clients':>8} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>7}")
    for row in rows:
        print(
            f"{row['batching']:>8} {row['clients']:>8} {row['requests']:>9} {row['p50 ms']:>8.1f} {row['p99 ms']:>8.1f} "
            f"{row['req/s']:>8.1f} {row['errors']:>7}"
        )
    if any(row["errors"] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
