"""The second MPP seller for tollgate's tests: pympp 0.16.0 (Payment auth scheme, tempo method,
charge intent) behind starlette + uvicorn on 127.0.0.1, a free port.

Started by start.mjs with --pympp; configuration comes from the environment:
TOLLGATE_MPP_RPC, TOLLGATE_MPP_CHAIN_ID, TOLLGATE_MPP_CURRENCY, TOLLGATE_MPP_RECIPIENT.
Prints `READY http://127.0.0.1:PORT` on stdout once listening; logs go to stderr.

Routes: /weather (0.01 pathUSD), /_log (GET: the request log, DELETE: clear it).
"""

import asyncio
import json
import os
import socket
import sys
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse
from starlette.routing import Route

from mpp.methods.tempo import server as tempo
from mpp.server import Mpp
from mpp.server.decorator import to_framework_response, to_request
from mpp.server.http import Response


class SyncSendShim(httpx.AsyncHTTPTransport):
    """pympp broadcasts with `eth_sendRawTransactionSync [raw, timeout_ms]`; anvil 1.7.1 accepts
    the method but rejects the second (integer) argument. Drop it; nothing else changes."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.content:
            try:
                body = json.loads(request.content)
            except ValueError:
                body = None
            if (
                isinstance(body, dict)
                and body.get("method") == "eth_sendRawTransactionSync"
                and isinstance(body.get("params"), list)
                and len(body["params"]) > 1
            ):
                body["params"] = body["params"][:1]
                content = json.dumps(body).encode()
                headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(content)).encode()))
                request = httpx.Request(request.method, request.url, headers=headers, content=content)
        return await super().handle_async_request(request)


def log(*parts: object) -> None:
    print("[pympp]", *parts, file=sys.stderr, flush=True)


RECIPIENT = os.environ["TOLLGATE_MPP_RECIPIENT"]
mpp = Mpp(
    methods=tempo.charge(
        recipient=RECIPIENT,
        chain_id=int(os.environ["TOLLGATE_MPP_CHAIN_ID"]),
        rpc_url=os.environ["TOLLGATE_MPP_RPC"],
        currencies=[os.environ["TOLLGATE_MPP_CURRENCY"]],
        http_client=httpx.AsyncClient(transport=SyncSendShim(), timeout=30),
    ),
    realm="pympp.tollgate.test",
    secret_key="tollgate-test-secret-key-pympp-0123456789",
)
events: list[dict] = []


async def weather(request: StarletteRequest):
    auth = request.headers.get("authorization") or ""
    event = {
        "kind": "request",
        "seller": "pympp",
        "path": request.url.path,
        "paid": auth.lower().startswith("payment "),
        "accept_payment": request.headers.get("accept-payment"),
    }
    result = await mpp.charge(amount="0.01", description="weather report")(await to_request(request))
    if result.status != 200:
        event["status"] = result.challenge.status
        events.append({**event, "at": time.time()})
        log(json.dumps(event))
        return to_framework_response(result.challenge)
    paid = result.with_receipt(Response.json({"forecast": "rainy", "seller": "pympp"}))
    event["status"] = 200
    event["receipt"] = paid.headers.get("payment-receipt")
    events.append({**event, "at": time.time()})
    log(json.dumps(event))
    return to_framework_response(paid)


async def event_log(request: StarletteRequest):
    if request.method == "DELETE":
        events.clear()
    return JSONResponse(events)


app = Starlette(
    routes=[
        Route("/weather", weather, methods=["GET", "POST"]),
        Route("/_log", event_log, methods=["GET", "DELETE"]),
    ]
)


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            return
        await asyncio.sleep(0.02)
    print(f"READY http://127.0.0.1:{port}", flush=True)
    await task


asyncio.run(main())
