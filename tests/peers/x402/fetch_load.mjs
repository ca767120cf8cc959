#!/usr/bin/env node
// Load with the reference TypeScript buyer (@x402/fetch 2.27.0): CONCURRENCY loops paying
// SELLER_URL+PATH for SECONDS, each loop one paid call at a time (as 8 parallel tool calls).
//
//   node tests/peers/x402/fetch_load.mjs SELLER_URL PATH PRIVATE_KEY CONCURRENCY SECONDS
//
// Prints one JSON line: {ok, errors, seconds, calls_per_s, first_error}.
//
// With X402_SEQUENTIAL=N instead: N paid calls one at a time (distinct arguments), and one JSON
// line {latencies_ms: [...]}, each call's latency from the first request to the read body;
// X402_PAUSE_MS (default 0) waits that long before each call.
import { wrapFetchWithPayment, x402Client } from "@x402/fetch";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

const [base, path, key, concurrencyArg, secondsArg] = process.argv.slice(2);
if (!base || !path || !key) {
  process.stderr.write("usage: fetch_load.mjs SELLER_URL PATH PRIVATE_KEY CONCURRENCY SECONDS\n");
  process.exit(2);
}
const concurrency = Number(concurrencyArg ?? "8");
const seconds = Number(secondsArg ?? "10");
const client = new x402Client();
registerExactEvmScheme(client, { signer: privateKeyToAccount(key) });
client.setSpendControls({ allowedAssets: true });
const payFetch = wrapFetchWithPayment(fetch, client);
const url = new URL(path, base).toString();

if (process.env.X402_SEQUENTIAL) {
  const latencies = [];
  const pause = Number(process.env.X402_PAUSE_MS ?? "0");
  for (let n = 0; n < Number(process.env.X402_SEQUENTIAL); n++) {
    if (pause > 0) await new Promise((resolve) => setTimeout(resolve, pause));
    const t = performance.now();
    const r = await payFetch(`${url}${url.includes("?") ? "&" : "?"}s=${n}`, { method: "GET" });
    await r.text();
    if (r.status !== 200) {
      process.stdout.write(JSON.stringify({ error: `status ${r.status}` }) + "\n");
      process.exit(1);
    }
    latencies.push(performance.now() - t);
  }
  process.stdout.write(JSON.stringify({ latencies_ms: latencies }) + "\n");
  process.exit(0);
}

let ok = 0;
let errors = 0;
let firstError = null;
const t0 = performance.now();
const deadline = t0 + seconds * 1000;
async function loop(i) {
  let n = 0;
  while (performance.now() < deadline) {
    try {
      // Distinct arguments per call unless the path is used as given (X402_IDENTICAL=1).
      const target = process.env.X402_IDENTICAL === "1" ? url : `${url}${url.includes("?") ? "&" : "?"}n=${i}-${n++}`;
      const r = await payFetch(target, { method: "GET" });
      await r.text();
      if (r.status === 200) ok++;
      else { errors++; firstError ??= `status ${r.status}`; }
    } catch (e) {
      errors++;
      firstError ??= String(e?.message ?? e).slice(0, 200);
    }
  }
}
await Promise.all(Array.from({ length: concurrency }, (_, i) => loop(i)));
const elapsed = (performance.now() - t0) / 1000;
process.stdout.write(JSON.stringify({ ok, errors, seconds: elapsed, calls_per_s: ok / elapsed, first_error: firstError }) + "\n");
