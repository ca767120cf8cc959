#!/usr/bin/env python3
"""Drive an MCP stdio server with the real Python SDK client (mcp==2.3.0).

Usage:
    python tests/clients/mcp_driver.py --mode legacy|stateless [--elicit MODE] --steps STEPS.json -- SERVER_CMD [ARGS...]
    python tests/clients/mcp_driver.py --mode legacy|stateless [--elicit MODE] --steps STEPS.json --url URL

--url connects over streamable HTTP (`streamable_http_client` with an httpx2 client from
`create_mcp_http_client`) instead of starting a stdio server; the environment variable
MCP_BEARER, when set, is sent as `Authorization: Bearer <MCP_BEARER>` on every request
(an environment variable, so the credential is not in the process list).

--elicit installs an elicitation callback (the client then declares the elicitation
capability; without --elicit it declares none):
  accept        answer {"action": "accept", "content": {"approve": true}}
  reject        answer {"action": "accept", "content": {"approve": false}}
  decline       answer {"action": "decline"}
  never         never answer (sleeps until the step or the server gives up)
  late:MS       sleep MS milliseconds, then accept
Every elicitation the callback receives is recorded in the output's "elicitations"
(message and requested schema). In legacy mode it answers `elicitation/create`; in
stateless mode (2026-07-28) `Client` runs it for each elicitation in an
`InputRequiredResult` and retries the call with `inputResponses` and the `requestState`.

Run it with the venv from tests/peers/python/requirements.txt (target/venv/bin/python).
Prints exactly one JSON object on stdout; diagnostics go to stderr.
Exit 0 when every step ran (steps may have recorded errors), 2 when the driver
could not start/connect to the server or the steps file is bad.

How mcp 2.3.0 works here (read from the installed source, not guessed)
-----------------------------------------------------------------------
Modes
  legacy    `mcp.client.stdio.stdio_client(StdioServerParameters(command, args, env))`
            yields (read, write); `mcp.ClientSession(read, write, message_handler=...)`
            entered as a context manager, then `await session.initialize()` sends
            `initialize` offering LATEST_HANDSHAKE_VERSION = "2025-11-25" plus
            `notifications/initialized`.
  stateless `mcp.Client(StdioServerParameters(...), mode="auto", cache=None, ...)`.
            mode="auto" sends `server/discover` (10 s timeout) with
            `_meta.io.modelcontextprotocol/{protocolVersion,clientInfo,clientCapabilities}`
            at "2026-07-28" and adopts the result (no initialize). Any JSON-RPC
            error (e.g. -32601) or a discover result without a modern version makes
            it FALL BACK to `initialize` silently -> check `protocol_version` in the
            output. (mode="2026-07-28" would adopt without probing at all.)
            After adoption every request carries those three reserved `_meta` keys.
            cache=None disables the SEP-2549 response cache so each list_tools step
            really hits the server.
  StdioServerParameters.env is merged OVER a minimal default env (HOME, PATH,
  ...), so the driver passes dict(os.environ) to inherit everything.

_meta on a call
  `session.call_tool(name, args, meta={...})` / `client.call_tool(..., meta={...})`;
  it becomes params._meta verbatim, except that None values are dropped
  (model_dump(exclude_none=True)) and, in stateless mode, the reserved
  io.modelcontextprotocol/* keys are added (setdefault only for logLevel).

Progress (same in both modes; JSONRPCDispatcher over stdio)
  Pass `progress_callback=async fn(progress: float, total: float|None, message: str|None)`.
  The dispatcher then sets params._meta.progressToken = <the JSON-RPC request id>
  (an int), OVERWRITING any progressToken given in `meta`. Incoming
  notifications/progress whose token matches a pending request id call the
  callback (progress/total coerced to float). Every notification (matched or not)
  is also teed to `message_handler` as a ServerNotification; a progressToken
  supplied via `meta` without a callback is only visible there. This driver
  records the callback values in `progress` and every notification in
  `notifications` (attributed to the step running when it arrived).

Cancellation (same in both modes over stdio)
  There is no cancel API: cancel the awaiting task (anyio cancel scope). The
  dispatcher then writes (shielded, 1 s bound) a courtesy
  `notifications/cancelled {"requestId": <id>, "reason": "caller cancelled"}` and
  drops any late response. A per-request timeout (`read_timeout_seconds`) sends the
  same notification with reason "timed out after Ns" and raises MCPError(-32001
  REQUEST_TIMEOUT). initialize/server/discover are never cancelled. In 2026-07-28
  the stdio spelling of cancellation is this same notification.

Output-schema validation
  After a non-isError tools/call, the client validates structuredContent against
  the tool's outputSchema from its last tools/list. If the tool was never listed
  it first sends an implicit tools/list itself. Failures raise RuntimeError
  ("Invalid structured content returned by tool X: ..." or "Tool X has an output
  schema but did not return structured content"), recorded as the step's error.

Steps (JSON array)
  {"op":"list_tools", "meta":{...}?, "cursor":"..."?, "timeout_s":30?}
  {"op":"call_tool", "name":"...", "arguments":{...}?, "meta":{...}?,
   "progress":true|false?, "cancel_after_ms":N?, "timeout_s":30?}
  {"op":"sleep", "ms":N}                       (driver extra: let late traffic arrive)
  {"op":"wait_file", "path":"...", "timeout_s":N}  (driver extra: wait until a file exists)
  call_tool extras: "report_to":"FILE" writes the step's output there as soon as it is done;
  "approval_id_from":"FILE" adds arguments.approval_id from that file's
  result.structuredContent.approval_id (an earlier step's report).
Step outputs
  list_tools -> {"tools":[...], "nextCursor"?...}  (ListToolsResult, camelCase, no None)
  call_tool  -> {"result":{...}, "progress":[{progress,total,message}], "notifications":[...]}
             or {"error":"<Type>: <msg>", "error_code"?: int, "progress":[...], ...}
             or {"cancelled": true, "progress":[...], ...}  (cancel_after_ms fired first)
             A step timeout gives {"error":"TimeoutError: ...", "timed_out": true}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from contextlib import AsyncExitStack
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import ElicitResult, Implementation, PaginatedRequestParams

DEFAULT_TIMEOUT_S = 30.0
CLIENT_INFO = Implementation(name="tollgate-test-driver", version="0.1.0")


def log(*args: Any) -> None:
    print("mcp_driver:", *args, file=sys.stderr, flush=True)


def dump(model: Any) -> Any:
    if model is None:
        return None
    if hasattr(model, "model_dump"):
        return model.model_dump(by_alias=True, mode="json", exclude_none=True, exclude_unset=True)
    return model


def describe_error(exc: BaseException) -> dict[str, Any]:
    # Unwrap single-exception groups that anyio task groups may produce.
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    out: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, MCPError):
        out["error_code"] = exc.code
        if exc.data is not None:
            out["error_data"] = exc.data
    return out


class Driver:
    def __init__(
        self, mode: str, steps: list[dict[str, Any]], command: list[str], elicit: str | None = None, url: str | None = None
    ) -> None:
        self.mode = mode
        self.url = url
        self.elicit = elicit
        self.elicitations: list[Any] = []
        self.steps = steps
        self.command = command
        self.session: ClientSession | None = None
        self.client: Client | None = None
        self.current_notifications: list[Any] | None = None
        self.stray_notifications: list[Any] = []

    async def message_handler(self, message: Any) -> None:
        if isinstance(message, Exception):
            log("transport exception:", repr(message))
            return
        entry = dump(message)
        if self.current_notifications is not None:
            self.current_notifications.append(entry)
        else:
            self.stray_notifications.append(entry)

    async def on_elicit(self, context: Any, params: Any) -> ElicitResult:
        self.elicitations.append(dump(params))
        mode = self.elicit or ""
        log(f"elicitation received; answering {mode!r}")
        if mode == "never":
            await anyio.sleep_forever()
        if mode.startswith("late:"):
            await anyio.sleep(float(mode.split(":", 1)[1]) / 1000)
            mode = "accept"
        if mode == "accept":
            return ElicitResult(action="accept", content={"approve": True})
        if mode == "reject":
            return ElicitResult(action="accept", content={"approve": False})
        return ElicitResult(action="decline")

    def callback(self) -> Any:
        return self.on_elicit if self.elicit else None

    # -- connection -----------------------------------------------------------------

    def params(self) -> StdioServerParameters:
        return StdioServerParameters(command=self.command[0], args=self.command[1:], env=dict(os.environ))

    def transport(self) -> Any:
        if self.url is None:
            return stdio_client(self.params())
        bearer = os.environ.get("MCP_BEARER")
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        return streamable_http_client(self.url, http_client=create_mcp_http_client(headers=headers))

    async def connect(self, stack: AsyncExitStack) -> dict[str, Any]:
        if self.mode == "legacy":
            read, write = await stack.enter_async_context(self.transport())
            session = ClientSession(
                read,
                write,
                message_handler=self.message_handler,
                client_info=CLIENT_INFO,
                elicitation_callback=self.callback(),
            )
            session = await stack.enter_async_context(session)
            init = await session.initialize()
            self.session = session
            return {
                "protocol_version": init.protocol_version,
                "server_info": dump(init.server_info),
                "capabilities": dump(init.capabilities),
                "instructions": init.instructions,
            }
        client = Client(
            self.params() if self.url is None else self.transport(),
            mode="auto",
            cache=None,
            message_handler=self.message_handler,
            client_info=CLIENT_INFO,
            elicitation_callback=self.callback(),
        )
        client = await stack.enter_async_context(client)
        self.client = client
        self.session = client.session
        if client.session.discover_result is None:
            log("stateless mode: server/discover not accepted, Client fell back to initialize")
        return {
            "protocol_version": client.protocol_version,
            "server_info": dump(client.server_info),
            "capabilities": dump(client.server_capabilities),
            "instructions": client.instructions,
        }

    # -- steps ----------------------------------------------------------------------

    async def list_tools(self, step: dict[str, Any]) -> dict[str, Any]:
        meta = step.get("meta")
        cursor = step.get("cursor")
        if self.client is not None:
            result = await self.client.list_tools(cursor=cursor, meta=meta)
        else:
            assert self.session is not None
            params = PaginatedRequestParams(cursor=cursor, _meta=meta) if (cursor or meta) else None
            result = await self.session.list_tools(params=params)
        return dump(result)

    async def call_tool(self, step: dict[str, Any], progress: list[dict[str, Any]]) -> Any:
        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append({"progress": p, "total": total, "message": message})

        callback = on_progress if step.get("progress") else None
        name = step["name"]
        arguments = step.get("arguments")
        meta = step.get("meta")
        if self.client is not None:
            return await self.client.call_tool(name, arguments, progress_callback=callback, meta=meta)
        assert self.session is not None
        return await self.session.call_tool(name, arguments, progress_callback=callback, meta=meta)

    async def run_step(self, step: dict[str, Any]) -> dict[str, Any]:
        op = step.get("op")
        timeout = float(step.get("timeout_s", DEFAULT_TIMEOUT_S))
        notifications: list[Any] = []
        self.current_notifications = notifications
        out: dict[str, Any] = {}
        started = time.monotonic()
        try:
            if op == "sleep":
                await anyio.sleep(float(step.get("ms", 0)) / 1000)
                out = {"slept_ms": step.get("ms", 0)}
            elif op == "list_tools":
                try:
                    with anyio.fail_after(timeout):
                        out = await self.list_tools(step)
                except TimeoutError:
                    out = {"error": f"TimeoutError: step timed out after {timeout}s", "timed_out": True}
                except Exception as exc:  # noqa: BLE001 - every client failure is a step outcome
                    out = describe_error(exc)
            elif op == "wait_file":
                path = step["path"]
                with anyio.move_on_after(timeout) as scope:
                    while not os.path.exists(path):
                        await anyio.sleep(0.05)
                out = {"waited_for": path, "timed_out": scope.cancelled_caught}
            elif op == "call_tool":
                source = step.get("approval_id_from")
                if source:
                    with open(source, encoding="utf-8") as f:
                        earlier = json.load(f)
                    approval_id = earlier["result"]["structuredContent"]["approval_id"]
                    step = {**step, "arguments": {**(step.get("arguments") or {}), "approval_id": approval_id}}
                out = await self.run_call(step, timeout)
                if step.get("report_to"):
                    with open(step["report_to"] + ".tmp", "w", encoding="utf-8") as f:
                        json.dump(out, f)
                    os.replace(step["report_to"] + ".tmp", step["report_to"])
            else:
                out = {"error": f"DriverError: unknown op {op!r}"}
        finally:
            self.current_notifications = None
        if notifications:
            out["notifications"] = notifications
        out["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
        return out

    async def run_call(self, step: dict[str, Any], timeout: float) -> dict[str, Any]:
        progress: list[dict[str, Any]] = []
        box: dict[str, Any] = {}
        cancel_after_ms = step.get("cancel_after_ms")

        async def do_call() -> None:
            # Exceptions are captured here so task groups never wrap them.
            try:
                box["result"] = await self.call_tool(step, progress)
            except Exception as exc:  # noqa: BLE001
                box["exc"] = exc

        timed_out = False
        cancelled = False
        with anyio.move_on_after(timeout) as timeout_scope:
            if cancel_after_ms is None:
                await do_call()
            else:
                with anyio.CancelScope() as call_scope:
                    async with anyio.create_task_group() as tg:

                        async def canceller() -> None:
                            await anyio.sleep(float(cancel_after_ms) / 1000)
                            log(f"cancelling call {step.get('name')!r} after {cancel_after_ms} ms")
                            call_scope.cancel()

                        tg.start_soon(canceller)
                        await do_call()
                        tg.cancel_scope.cancel()  # call finished first: stop the canceller
                cancelled = call_scope.cancelled_caught
        if timeout_scope.cancelled_caught:
            timed_out = True

        out: dict[str, Any]
        if timed_out:
            out = {"error": f"TimeoutError: step timed out after {timeout}s", "timed_out": True}
        elif cancelled:
            out = {"cancelled": True}
        elif "exc" in box:
            out = describe_error(box["exc"])
        else:
            out = {"result": dump(box.get("result"))}
            if cancel_after_ms is not None:
                out["cancelled"] = False
        out["progress"] = progress
        return out

    async def run(self) -> tuple[dict[str, Any] | None, int]:
        output: dict[str, Any] | None = None
        connected = False
        # One cancel scope around the whole connection: its deadline bounds the
        # connect phase only. (A fail_after around just the connect would exit
        # before the transport's task group and break anyio's scope nesting.)
        with anyio.CancelScope(deadline=anyio.current_time() + DEFAULT_TIMEOUT_S) as connect_scope:
            try:
                async with AsyncExitStack() as stack:
                    try:
                        header = await self.connect(stack)
                    except Exception as exc:  # noqa: BLE001
                        log("could not connect:", describe_error(exc)["error"])
                        traceback.print_exc(file=sys.stderr)
                        return None, 2
                    connected = True
                    connect_scope.deadline = math.inf
                    log(f"connected: protocol {header['protocol_version']}")
                    results = []
                    for i, step in enumerate(self.steps):
                        res = await self.run_step(step)
                        log(f"step {i} {step.get('op')}: {sorted(res)}")
                        results.append(res)
                    output = {k: v for k, v in header.items() if v is not None or k != "instructions"}
                    output["steps"] = results
                    if self.stray_notifications:
                        output["stray_notifications"] = self.stray_notifications
                    output["elicitations"] = self.elicitations
                    # Leaving the stack lets the SDK stop the server (close stdin, wait, SIGTERM, SIGKILL).
            except Exception as exc:  # noqa: BLE001
                # Teardown failures after all steps ran still count as a completed run.
                log("error during shutdown:", describe_error(exc)["error"])
                traceback.print_exc(file=sys.stderr)
        if not connected:
            log(f"could not connect within {DEFAULT_TIMEOUT_S}s" if connect_scope.cancelled_caught else "could not connect")
            return None, 2
        return output, (0 if output is not None else 2)


def main() -> int:
    argv = sys.argv[1:]
    if "--" not in argv and not any(a == "--url" or a.startswith("--url=") for a in argv):
        print("usage: mcp_driver.py --mode legacy|stateless --steps STEPS.json (-- SERVER_CMD [ARGS...] | --url URL)", file=sys.stderr)
        return 2
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(prog="mcp_driver.py")
    parser.add_argument("--url", default=None, help="connect over streamable HTTP to URL (bearer from MCP_BEARER)")
    parser.add_argument("--mode", choices=["legacy", "stateless"], required=True)
    parser.add_argument("--steps", required=True, help="path to a JSON array of steps ('-' for stdin)")
    parser.add_argument("--elicit", default=None, help="accept|reject|decline|never|late:MS (default: no elicitation callback)")
    ns = parser.parse_args(argv[:split])
    command = argv[split + 1 :]
    if not command and ns.url is None:
        parser.error("missing SERVER_CMD after -- (or --url)")
    try:
        raw = sys.stdin.read() if ns.steps == "-" else open(ns.steps, encoding="utf-8").read()
        steps = json.loads(raw)
        if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
            raise ValueError("steps must be a JSON array of objects")
    except (OSError, ValueError) as exc:
        log(f"bad steps file: {exc}")
        return 2

    output, code = anyio.run(Driver(ns.mode, steps, command, ns.elicit, ns.url).run)
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
        sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
