#!/usr/bin/env python3
"""Reference paying MCP client: the x402 SDK's own ``x402MCPSession`` (x402 2.25.0) over an
``mcp`` 1.30.0 ``ClientSession``, stdio or streamable HTTP. A benchmark baseline for tollgate.

    buyer.py (--stdio "CMD ARGS..." | --url URL) --key HEX --tool weather --args '{"city":"Paris"}'
             [--calls N] [--concurrency C] [--timeout S] [--network eip155:31337] [--verbose]

Prints ONE JSON line: {"ok": n, "errors": n, "ms": [per call], "first_ms": ms, "median_ms": ms,
"results": [...]} (results: per call {ok, is_error, payment_made, payment_response, text,
structured, meta, error}; --verbose keeps them all, otherwise only the first and the errors).
A call is ok when the final result is not isError. Calls run on one session; --concurrency C
runs up to C at once. Exit 0 iff errors == 0.
"""

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

from eth_account import Account
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

from x402 import x402Client
from x402.mcp import x402MCPSession
from x402.mechanisms.evm.exact import ExactEvmClientScheme
from x402.mechanisms.evm.signers import EthAccountSigner


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--stdio", metavar="CMD")
    src.add_argument("--url")
    p.add_argument("--key", required=True)
    p.add_argument("--tool", default="weather")
    p.add_argument("--args", default="{}")
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0, help="per call, seconds")
    p.add_argument("--network", default="eip155:31337")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args()


def dump(v: Any) -> Any:
    if hasattr(v, "model_dump"):
        return v.model_dump(by_alias=True, exclude_none=True, mode="json")
    return v


async def run(args: argparse.Namespace, session: ClientSession) -> dict:
    client = x402Client()
    client.register(args.network, ExactEvmClientScheme(EthAccountSigner(Account.from_key(args.key))))
    # The peers' USDC is not an SDK default asset: by default the client refuses it
    # ("no requirements allowed by spend controls"). allowed_assets=True lifts the allowlist.
    client.set_spend_controls({"allowed_assets": True})
    paying = x402MCPSession(session, client, auto_payment=True)
    await paying.initialize()
    tool_args = json.loads(args.args)
    sem = asyncio.Semaphore(max(1, args.concurrency))
    out: list[dict] = [None] * args.calls  # type: ignore[list-item]

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            rec: dict[str, Any] = {}
            try:
                r = await asyncio.wait_for(
                    paying.call_tool(args.tool, tool_args, read_timeout_seconds=timedelta(seconds=args.timeout)),
                    args.timeout + 1,
                )
                raw = r.raw_result
                rec = {
                    "ok": not r.is_error,
                    "is_error": r.is_error,
                    "payment_made": r.payment_made,
                    "payment_response": dump(r.payment_response),
                    "text": [getattr(c, "text", None) for c in r.content],
                    "structured": getattr(raw, "structuredContent", None),
                    "meta": getattr(raw, "meta", None),
                }
            except McpError as e:
                rec = {"ok": False, "error": f"McpError {e.error.code}: {e.error.message}", "error_data": e.error.data}
            except (asyncio.TimeoutError, TimeoutError):
                rec = {"ok": False, "error": f"timeout after {args.timeout}s"}
            except Exception as e:  # noqa: BLE001
                rec = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            rec["ms"] = round((time.perf_counter() - t) * 1000, 1)
            out[i] = rec

    t0 = time.perf_counter()
    await one(0)  # the first call alone: first_ms includes no contention
    first = out[0]["ms"]
    await asyncio.gather(*(one(i) for i in range(1, args.calls)))
    ms = [r["ms"] for r in out]
    ok = sum(1 for r in out if r["ok"])
    keep = out if args.verbose else [r for i, r in enumerate(out) if i == 0 or not r["ok"]]
    return {
        "ok": ok,
        "errors": len(out) - ok,
        "ms": ms,
        "first_ms": first,
        "median_ms": round(statistics.median(ms), 1),
        "total_ms": round((time.perf_counter() - t0) * 1000, 1),
        "results": keep,
    }


async def main() -> int:
    args = parse_args()
    if args.stdio:
        argv = shlex.split(args.stdio)
        params = StdioServerParameters(command=argv[0], args=argv[1:])
        ctx = stdio_client(params)
    else:
        ctx = streamablehttp_client(args.url)
    async with ctx as streams:
        read, write = streams[0], streams[1]
        async with ClientSession(read, write) as session:
            report = await run(args, session)
    sys.stdout.write(json.dumps(report, default=str) + "\n")
    sys.stdout.flush()
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    import os

    os._exit(code)  # don't wait on a hung server's streams
