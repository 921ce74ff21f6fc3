"""Measure ``greencam serve`` against ``greencam serve --ray`` (1 and 2 replicas) on this machine (docs/scaling.md).

    PYTHONPATH=. python tests/measure_cluster.py --clients 2 --frames 12 --offers 20
    PYTHONPATH=. python tests/measure_cluster.py --reconnects 3


For each server: the time of a ``POST /whip`` (a real offer, answered and then deleted) and
``greencam start --server`` clients run at once on the same clip, each reporting its masks/s and
capture-to-mask latency. Everything on 127.0.0.1, seeded random weights, tiny at 256 px on the CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from greenscreen_cam.core import percentile
from tests.conftest import moving_disc_frames, write_video
from tests.test_cluster import TOKEN, Cluster, StderrLog, _client, _offers, _request, kill_a_busy_replica, wait_for
from tests.test_link_cli import BOX, LOOPBACK, free_port

MODEL = ["--model", "tiny", "--device", "cpu", "--resolution", "256"]
DONE = re.compile(r"tracker\s+([\d.]+) fps.*latency p50 (\d+) ms / p95 (\d+) ms")


class Plain(Cluster):
    """Plain ``greencam serve`` in a subprocess, with the same interface as :class:`Cluster`."""

    def __init__(self) -> None:  # noqa: D107 - mirrors Cluster.__init__ without Ray
        import os
        import threading

        self.tmp = tempfile.mkdtemp(prefix="gcplain", dir="/tmp")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        cmd = [sys.executable, "-c", LOOPBACK, "serve", "--port", str(self.port), "--token", TOKEN,
               "--random-weights", "--min-fps", "0", *MODEL]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()


def offer_times(url: str, n: int) -> list[float]:
    async def run() -> list[float]:
        sdps, pcs = await _offers(n)
        out = []
        auth = {"Authorization": f"Bearer {TOKEN}"}
        try:
            for sdp in sdps:
                t0 = time.perf_counter()
                status, _, loc = await asyncio.to_thread(
                    _request, url + "/whip", "POST", sdp.encode(), {**auth, "Content-Type": "application/sdp"}
                )
                out.append((time.perf_counter() - t0) * 1000.0)
                assert status == 201, status
                await asyncio.to_thread(_request, url + loc, "DELETE", b"", auth)
        finally:
            for pc in pcs:
                await pc.close()
        return out

    return asyncio.run(run())


def clients(url: str, clip: Path, n: int, tmp: Path) -> list[tuple[float, int, int]]:
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOOPBACK,
                "start",
                "--server",
                url,
                "--token",
                TOKEN,
                "--source",
                str(clip),
                "--bbox",
                BOX,
                "--refine",
                "none",
                "--smooth",
                "0",
                *MODEL,
                "--output",
                str(tmp / f"o{i}.mp4"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1]), **dict(__import__("os").environ)},
        )  # fmt: skip
        for i in range(n)
    ]
    out = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        m = DONE.search(err.splitlines()[-1] if err else "")
        assert p.returncode == 0 and m, err[-2000:]
        out.append((float(m.group(1)), int(m.group(2)), int(m.group(3))))
    return out


def reconnects(n: int, tmp: Path) -> None:
    """``n`` times: two clients on 2-3 replicas, the replica tracking one is killed; how long until they moved."""
    clip = write_video(tmp / "long.mp4", moving_disc_frames(40))
    cluster = Cluster("--min-replicas", "2", "--max-replicas", "3", "--max-sessions", "2")
    times = []
    try:
        cluster.wait_ready(600)
        for k in range(n):
            wait_for(lambda: len(cluster.health()["replicas"]) >= 2, 180, "two replicas", every=0.5)
            procs = [_client(cluster, clip, tmp / f"r{k}-{i}") for i in range(2)]
            try:
                held, took = kill_a_busy_replica(cluster, [StderrLog(p) for p in procs])
                times.append(took)
                sys.stdout.write(f"kill {k + 1}: {held} client(s) on the killed replica, moved in {took:.2f} s\n")
                sys.stdout.flush()
            finally:
                for p in procs:
                    p.kill()
                    p.wait(30)
    finally:
        cluster.stop()
    sys.stdout.write(
        f"reconnect after a replica is killed: p50 {percentile(times, 50):.2f} s, max {max(times):.2f} s\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--offers", type=int, default=20)
    ap.add_argument("--reconnects", type=int, default=0, help="only time this many replica kills")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gcmeasure"))
    if args.reconnects:
        reconnects(args.reconnects, tmp)
        return
    clip = write_video(tmp / "clip.mp4", moving_disc_frames(args.frames))
    head = (
        f"| server | ready in | POST /whip p50 / p95 ({args.offers} offers) | masks/s per session "
        f"({args.clients} clients, {args.frames} frames) | latency p50 / p95 |\n|---|---|---|---|---|"
    )
    sys.stdout.write(head + "\n")
    rows = []
    for name, make in [
        ("plain serve", Plain),
        ("--ray, 1 replica", lambda: Cluster("--replicas", "1")),
        ("--ray, 2 replicas", lambda: Cluster("--replicas", "2")),
    ]:
        server = make()
        try:
            t0 = time.monotonic()
            server.wait_ready(600)
            if isinstance(server, Cluster) and not isinstance(server, Plain):
                want = 1 if "1 replica" in name else 2
                wait_for(lambda s=server, w=want: len(s.health()["replicas"]) == w, 120, "replicas", every=0.5)
            ready = time.monotonic() - t0
            offers = offer_times(server.url, args.offers)
            out = tmp / f"server{len(rows)}"
            out.mkdir()
            per = clients(server.url, clip, args.clients, out)
        finally:
            server.stop()
        fps = [p[0] for p in per]
        rows.append(
            f"| {name} | {ready:.0f} s | {percentile(offers, 50):.1f} / {percentile(offers, 95):.1f} ms | "
            f"{statistics.mean(fps):.2f} ({min(fps):.2f}-{max(fps):.2f}) | "
            f"{statistics.median(p[1] for p in per):.0f} / {max(p[2] for p in per)} ms |"
        )
        sys.stdout.write(rows[-1] + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
