#!/usr/bin/env node
// Pay an x402 seller with the reference TypeScript buyer (@x402/fetch 2.27.0 + @x402/evm).
//
//   node tests/peers/x402/pay_with_fetch.mjs SELLER_URL PATH [PRIVATE_KEY]
//
// PRIVATE_KEY defaults to $X402_BUYER_KEY, else anvil dev key #1 (the peers' funded buyer).
// Handles both protocol versions: v2 (PAYMENT-REQUIRED / PAYMENT-SIGNATURE / PAYMENT-RESPONSE)
// and v1 (402 JSON body / X-PAYMENT / X-PAYMENT-RESPONSE).
// Prints one JSON line: {status, body, payment_response_header_decoded, ms, ...}; `ms` is the
// wall time of the whole paid fetch (402, sign, paid retry incl. verify + on-chain settle),
// excluding node start-up and imports.
// The peers' USDC is not a default asset, so spend controls are opened with allowedAssets: true.
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { privateKeyToAccount } from "viem/accounts";

const [base, path, keyArg] = process.argv.slice(2);
if (!base || !path) {
  process.stderr.write("usage: pay_with_fetch.mjs SELLER_URL PATH [PRIVATE_KEY]\n");
  process.exit(2);
}
const key = keyArg ?? process.env.X402_BUYER_KEY ?? "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const account = privateKeyToAccount(key);

const client = new x402Client();
registerExactEvmScheme(client, { signer: account }); // v2 "eip155:*" + every v1 EVM network name
client.setSpendControls({ allowedAssets: true });

let sent = null;
const tracingFetch = async (input, init) => {
  const req = new Request(input, init);
  const h = req.headers.get("payment-signature") ?? req.headers.get("x-payment");
  if (h) sent = { header: req.headers.has("payment-signature") ? "PAYMENT-SIGNATURE" : "X-PAYMENT", decoded: JSON.parse(Buffer.from(h, "base64").toString("utf8")) };
  return fetch(req);
};
const payFetch = wrapFetchWithPayment(tracingFetch, client);

const url = new URL(path, base).toString();
// X402_REPEAT=N (benchmarks): first pay N times and report every duration in `ms_all`.
const repeat = Number(process.env.X402_REPEAT ?? "0");
const msAll = [];
for (let i = 0; i < repeat; i++) {
  const t0 = performance.now();
  const r = await payFetch(url, { method: "GET" });
  await r.text();
  if (r.status !== 200) { process.stderr.write(`repeat ${i}: status ${r.status}\n`); process.exit(1); }
  msAll.push(Math.round((performance.now() - t0) * 10) / 10);
}
const t = performance.now();
let out;
try {
  const res = await payFetch(url, { method: "GET" });
  const text = await res.text();
  const ms = Math.round((performance.now() - t) * 10) / 10;
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  const prHeader = res.headers.get("payment-response") ?? res.headers.get("x-payment-response");
  out = {
    status: res.status,
    body,
    payment_response_header_decoded: prHeader ? decodePaymentResponseHeader(prHeader) : null,
    payment_response_header_name: res.headers.has("payment-response") ? "PAYMENT-RESPONSE" : res.headers.has("x-payment-response") ? "X-PAYMENT-RESPONSE" : null,
    payment_required_decoded: res.headers.get("payment-required") ? JSON.parse(Buffer.from(res.headers.get("payment-required"), "base64").toString("utf8")) : null,
    sent_payment: sent,
    ms,
    ms_all: msAll,
  };
} catch (e) {
  out = { status: null, error: String(e?.message ?? e), sent_payment: sent, ms: Math.round(performance.now() - t) };
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(out.status === 200 ? 0 : 1);
