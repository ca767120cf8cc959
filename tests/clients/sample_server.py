"""Tiny stdio MCP server built on mcp 2.3.0's own MCPServer (the former FastMCP).

Reference peer for checking tests/clients/mcp_driver.py and the Inspector CLI
commands in tests/peers/inspector/README.md. It speaks both protocol eras over
stdio (the SDK's dual-era loop: `initialize` -> 2025-11-25, `server/discover`
-> 2026-07-28).

Tools:
  add(a, b)                    -> structured {"sum": int} with an outputSchema
  count(steps, delay_ms)       -> reports progress once per step, then text
  bad_output()                 -> advertises outputSchema {"sum": int} but returns
                                  {"sum": "not-a-number"} (client-side validation failure)
  echo_meta()                  -> returns the request's _meta as JSON text (no outputSchema)

Run: target/venv/bin/python tests/clients/sample_server.py
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
from pydantic import BaseModel

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, TextContent

server = MCPServer(name="sample-server", version="0.1.0")


class AddResult(BaseModel):
    sum: int


@server.tool(description="Add two integers; returns structured content.")
def add(a: int, b: int) -> AddResult:
    return AddResult(sum=a + b)


@server.tool(description="Count to `steps`, reporting progress after each step.")
async def count(steps: int = 3, delay_ms: int = 50, ctx: Context | None = None) -> str:
    for i in range(1, steps + 1):
        await anyio.sleep(delay_ms / 1000)
        if ctx is not None:
            await ctx.report_progress(i, steps, f"step {i}/{steps}")
    return f"counted to {steps}"


@server.tool(
    description="Advertises an outputSchema but returns non-conforming structured content.",
    structured_output=False,
)
def bad_output() -> CallToolResult:
    return CallToolResult(
        content=[TextContent(type="text", text='{"sum": "not-a-number"}')],
        structured_content={"sum": "not-a-number"},
    )


# FuncMetadata fields are read live: a schema with no output_model is advertised
# in tools/list but not validated server-side, so the bad result reaches the client.
_bad = server._tool_manager.get_tool("bad_output")  # pyright: ignore[reportPrivateUsage]
assert _bad is not None
_bad.fn_metadata.output_schema = AddResult.model_json_schema()


@server.tool(description="Echo the request _meta back as JSON text.", structured_output=False)
def echo_meta(ctx: Context | None = None) -> str:
    import json

    meta: Any = None
    if ctx is not None:
        meta = ctx.request_context.meta
        if hasattr(meta, "model_dump"):
            meta = meta.model_dump(by_alias=True, mode="json", exclude_none=True)
    return json.dumps(meta, sort_keys=True, default=str)


if __name__ == "__main__":
    print("sample_server: starting on stdio", file=sys.stderr)
    server.run("stdio")
