#!/usr/bin/env node
// Reference paying MCP client: mppx 0.11.0's `McpClient.wrap` (mppx/mcp-sdk/client) around an
// @modelcontextprotocol/sdk 1.32.2 `Client`, with mppx's tempo client method; stdio or streamable
// HTTP. A benchmark baseline for tollgate.
//
//   node tests/peers/mpp/mcp_buyer.mjs (--stdio "CMD ARGS..." | --url URL) --key HEX --rpc URL
//        [--tool weather] [--args '{"city":"Paris"}'] [--calls N] [--concurrency C]
//        [--timeout S] [--verbose]
//
// --rpc is the Tempo anvil (start.mjs's `rpc`): the client prepares/signs the Tempo transaction
// against it. Prints ONE JSON line {"ok","errors","ms":[...],"first_ms","median_ms","total_ms",
// "results"} (results: per call {ok, isError, receipt, content, structuredContent, _meta, error};
// --verbose keeps all, otherwise the first and the failures). Exit 0 iff errors == 0.
import { parseArgs } from "node:util";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { tempo } from "mppx/client";
import { McpClient } from "mppx/mcp-sdk/client";
import { privateKeyToAccount } from "viem/accounts";
import { tempoClient } from "./tempo_client.mjs";

const { values: opt } = parseArgs({
  options: {
    stdio: { type: "string" },
    url: { type: "string" },
    key: { type: "string" },
    rpc: { type: "string" },
    tool: { type: "string", default: "weather" },
    args: { type: "string", default: "{}" },
    calls: { type: "string", default: "1" },
    concurrency: { type: "string", default: "1" },
    timeout: { type: "string", default: "30" },
    verbose: { type: "boolean", default: false },
  },
});
if ((!opt.stdio && !opt.url) || !opt.key || !opt.rpc) {
  process.stderr.write("usage: mcp_buyer.mjs (--stdio CMD | --url URL) --key HEX --rpc URL [--tool T] [--args JSON] [--calls N] [--concurrency C] [--timeout S]\n");
  process.exit(2);
}

// Minimal shell-like split (double/single quotes, no escapes beyond that).
const split = (s) => [...s.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);

const transport = opt.stdio
  ? (() => { const [command, ...args] = split(opt.stdio); return new StdioClientTransport({ command, args, stderr: "inherit" }); })()
  : new StreamableHTTPClientTransport(new URL(opt.url));
const client = new Client({ name: "tollgate-mppx-reference-buyer", version: "0.0.0" });
await client.connect(transport);

const rpcClient = tempoClient(opt.rpc, undefined, { scrubEstimateGas: true });
// viem 2.57.20 gives an expiring-nonce Tempo transaction (nonceKey 2^256-1) a random 48-bit
// nonce; anvil 1.7.1 (hardfork t4) only accepts nonce 0 there and otherwise leaves the
// transaction pending until its validBefore passes. Sign such transactions with nonce 0.
const base = privateKeyToAccount(opt.key);
const MAX_U256 = 2n ** 256n - 1n;
const account = {
  ...base,
  async signTransaction(tx, options) {
    const expiring = tx?.nonceKey !== undefined && BigInt(tx.nonceKey) === MAX_U256;
    return base.signTransaction(expiring ? { ...tx, nonce: 0 } : tx, options);
  },
};
McpClient.wrap(client, {
  methods: [tempo({ account, getClient: () => rpcClient })],
});

const toolArgs = JSON.parse(opt.args);
const timeoutMs = Number(opt.timeout) * 1000;
const calls = Number(opt.calls);
const out = new Array(calls);

async function one(i) {
  const t = performance.now();
  let rec;
  try {
    const r = await client.callTool({ name: opt.tool, arguments: toolArgs }, undefined, { timeout: timeoutMs });
    rec = { ok: !r.isError, isError: Boolean(r.isError), receipt: r.receipt ?? null, content: r.content, structuredContent: r.structuredContent, _meta: r._meta };
  } catch (e) {
    rec = { ok: false, error: String(e?.message ?? e), code: e?.code, data: e?.data };
  }
  rec.ms = Math.round((performance.now() - t) * 10) / 10;
  out[i] = rec;
}

const t0 = performance.now();
await one(0);
let next = 1;
await Promise.all(Array.from({ length: Math.max(1, Number(opt.concurrency)) }, async () => {
  while (next < calls) await one(next++);
}));
const ms = out.map((r) => r.ms);
const sorted = [...ms].sort((a, b) => a - b);
const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
const ok = out.filter((r) => r.ok).length;
process.stdout.write(JSON.stringify({
  ok,
  errors: calls - ok,
  ms,
  first_ms: ms[0],
  median_ms: median,
  total_ms: Math.round((performance.now() - t0) * 10) / 10,
  results: opt.verbose ? out : out.filter((r, i) => i === 0 || !r.ok),
}) + "\n");
await Promise.race([client.close().catch(() => {}), new Promise((r) => setTimeout(r, 500))]);
process.exit(ok === calls ? 0 : 1);
