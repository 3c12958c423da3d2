"""Idle-connection flood: does health keep answering while N sockets sit idle?

Opens N connections to a running gateway (half send an unfinished request head, half
send nothing), probes ``/api/health`` while they are open, then waits for the server to
close them and prints one FLOOD_JSON line. Loopback or lab addresses only; it stops by
itself (bounded by --hold seconds).

Usage: idle_flood.py HOST PORT [--connections 3000] [--probes 20] [--hold 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import socket
import statistics
import time

HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: "


def probe(host: str, port: int) -> tuple[int, float]:
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/api/health")
        status = conn.getresponse().status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--hold", type=float, default=15.0, help="max seconds to wait for closes")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.connections + 512), hard))

    flood, refused = [], 0
    for i in range(args.connections):
        try:
            sock = socket.create_connection((args.host, args.port), timeout=5)
            if i % 2:
                sock.sendall(HALF_HEAD)
            flood.append(sock)
        except OSError:
            refused += 1
    probes = []
    for _ in range(args.probes):
        probes.append(probe(args.host, args.port))
        time.sleep(0.1)
    seconds = sorted(s for _, s in probes)

    deadline = time.monotonic() + args.hold
    closed_by_server = 0
    for sock in flood:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            sock.recv(200)  # an answer (408) or EOF: either way the server let go
            closed_by_server += 1
        except (TimeoutError, OSError):
            pass
        sock.close()
    print(
        "FLOOD_JSON "
        + json.dumps(
            {
                "connections": len(flood),
                "refused": refused,
                # Without a database health answers 503 by design: count any HTTP answer.
                "health_answered": sum(status != 0 for status, _ in probes),
                "health_statuses": sorted({status for status, _ in probes}),
                "health_probes": len(probes),
                "health_p50_s": round(statistics.median(seconds), 4),
                "health_max_s": round(seconds[-1], 4),
                "closed_by_server_within_hold": closed_by_server,
            }
        )
    )


if __name__ == "__main__":
    main()
