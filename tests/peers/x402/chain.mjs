#!/usr/bin/env node
// Tiny JSON-RPC helpers for tests (plain fetch, no viem: starts in ~50 ms).
//
//   node tests/peers/x402/chain.mjs balance RPC TOKEN ADDRESS   -> decimal integer (ERC-20 balanceOf)
//   node tests/peers/x402/chain.mjs tx RPC TXHASH               -> success | reverted | missing
//
// balance.mjs and tx.mjs are the same commands under their own names.
export async function rpc(url, method, params) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }),
  });
  const j = await res.json();
  if (j.error) throw new Error(`${method}: ${JSON.stringify(j.error)}`);
  return j.result;
}

export async function balance(url, token, address) {
  const a = address.toLowerCase().replace(/^0x/, "");
  if (!/^[0-9a-f]{40}$/.test(a)) throw new Error(`bad address ${address}`);
  const data = "0x70a08231" + a.padStart(64, "0"); // balanceOf(address)
  return BigInt(await rpc(url, "eth_call", [{ to: token, data }, "latest"])).toString();
}

export async function txStatus(url, hash) {
  const r = await rpc(url, "eth_getTransactionReceipt", [hash]);
  if (!r) return "missing";
  return r.status === "0x1" ? "success" : "reverted";
}

export async function main(argv) {
  const [cmd, ...args] = argv;
  try {
    if (cmd === "balance" && args.length === 3) console.log(await balance(...args));
    else if (cmd === "tx" && args.length === 2) console.log(await txStatus(...args));
    else {
      process.stderr.write("usage: chain.mjs balance RPC TOKEN ADDRESS | chain.mjs tx RPC TXHASH\n");
      process.exit(2);
    }
  } catch (e) {
    process.stderr.write(`${e?.message ?? e}\n`);
    process.exit(1);
  }
}

import { pathToFileURL } from "node:url";
if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) await main(process.argv.slice(2));
