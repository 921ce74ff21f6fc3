"""The floor of Ray Serve's HTTP path: proxy -> ingress (FastAPI), and proxy -> ingress -> one more deployment.

No-op deployments on a local Ray instance (127.0.0.1 only); prints the median of 50 POSTs per path
(docs/scaling.md compares it with the time ``greencam serve --ray`` adds to an offer):

    RAY_TMPDIR=/tmp/rayhop .venv/bin/python scripts/ray_hop_floor.py
"""

import socket
import statistics
import time
import urllib.request

import ray
from fastapi import FastAPI
from ray import serve

ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
api = FastAPI()


@serve.deployment
class Inner:
    async def ping(self) -> str:
        return "ok"


@serve.deployment
@serve.ingress(api)
class Outer:
    def __init__(self, inner):
        self.inner = inner

    @api.post("/one")
    async def one(self) -> str:
        return "ok"

    @api.post("/two")
    async def two(self) -> str:
        return await self.inner.ping.remote()


s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
serve.start(http_options={"host": "127.0.0.1", "port": port})
serve.run(Outer.bind(Inner.bind()), route_prefix="/")


def t(path):
    out = []
    for _ in range(60):
        t0 = time.perf_counter()
        urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"x", method="POST")
        ).read()
        out.append((time.perf_counter() - t0) * 1000)
    return statistics.median(out[10:])


for path in ("/one", "/two", "/one", "/two"):
    print(path, f"{t(path):.2f} ms p50")
serve.shutdown()
ray.shutdown()
