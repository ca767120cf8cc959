#!/usr/bin/env python3
"""An orchestrator that hands three sub-agents capped budgets on one remote tollgate.

One `tollgate serve --http` serves every agent; each connects with its own credential as
`Authorization: Bearer`. The orchestrator (its credential in ORCHESTRATOR_TOKEN) calls
tollgate's `delegate_budget` once per sub-agent, then runs the sub-agents in parallel, each
a separate MCP client session over streamable HTTP with the child credential as its bearer,
each calling a paid tool. Every child's spend counts against the orchestrator's budget;
`tollgate budget` draws the tree.

Usage (Python `mcp` 2.3, e.g. the venv from tests/peers/python/requirements.txt):

    ORCHESTRATOR_TOKEN=... python examples/orchestrator/orchestrator.py \\
        --url http://127.0.0.1:8402/mcp --tool weather --children 3 \\
        --child-budget-usd-micros 2000 --calls 2

Prints one JSON object on stdout: the delegations (label, effective limits) and, per
sub-agent, each call's outcome (the receipt of a paid call, or the refusal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


class Agent:
    """One MCP session over streamable HTTP, identified by its bearer credential."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token

    async def call(self, calls: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {self.token}"})
        out = []
        async with streamable_http_client(self.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                await session.list_tools()
                for name, arguments in calls:
                    result = await session.call_tool(name, arguments)
                    out.append(
                        result.model_dump(by_alias=True, mode="json", exclude_none=True)
                    )
        return out


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tool", required=True, help="the paid tool every sub-agent calls")
    parser.add_argument("--children", type=int, default=3)
    parser.add_argument("--child-budget-usd-micros", type=int, required=True)
    parser.add_argument("--calls", type=int, default=1, help="calls per sub-agent")
    args = parser.parse_args()
    token = os.environ.get("ORCHESTRATOR_TOKEN")
    if not token:
        print("ORCHESTRATOR_TOKEN is not set", file=sys.stderr)
        return 2

    orchestrator = Agent(args.url, token)
    delegations = await orchestrator.call(
        [
            (
                "delegate_budget",
                {
                    "budget_usd_micros": args.child_budget_usd_micros,
                    "tools": [args.tool],
                    "label": f"sub-agent-{i}",
                },
            )
            for i in range(args.children)
        ]
    )
    children = []
    for delegation in delegations:
        if delegation.get("isError"):
            print(json.dumps({"error": delegation}), file=sys.stderr)
            return 1
        children.append(delegation["structuredContent"])

    results: list[Any] = [None] * len(children)

    async def run(i: int, child: dict[str, Any]) -> None:
        agent = Agent(args.url, child["token"])
        results[i] = await agent.call([(args.tool, {})] * args.calls)

    async with anyio.create_task_group() as group:
        for i, child in enumerate(children):
            group.start_soon(run, i, child)

    report = {
        "delegations": [{k: v for k, v in c.items() if k != "token"} for c in children],
        "sub_agents": [
            {"label": child["label"], "calls": calls} for child, calls in zip(children, results)
        ],
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(anyio.run(main))
