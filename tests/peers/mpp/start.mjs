#!/usr/bin/env node
// Real MPP peers for tollgate's tests (see README.md next to this file).
//
//   node tests/peers/mpp/start.mjs [--pympp /path/to/venv/bin/python]
//
// Starts anvil in Tempo mode (`--network tempo --hardfork t4`, chain 31337, TIP-20 pathUSD at
// 0x20c0…0000 with every dev account funded), an mppx 0.11.0 seller (Payment auth scheme, tempo
// method, charge intent), and, with --pympp, the pympp 0.16.0 seller (pympp_seller.py) on the
// same chain. Prints ONE JSON line to stdout when ready, logs to stderr only, and stays up until
// stdin closes or it gets SIGTERM/SIGINT/SIGHUP; then it stops everything it started.
//
// mppx routes (each logs to GET /_log, cleared by DELETE /_log):
//   /weather         charge 0.01 pathUSD to the mppx recipient
//   /expensive       charge 5 pathUSD
//   /expired         a challenge that expired a minute ago (every time)
//   /unknown-method  a Payment challenge for a method nobody implements (`lightning`)
//   /mixed           the /weather challenge, plus `Bearer` and `L402` challenges in the same 402
//   /problem         402 with only an application/problem+json body and no challenge
//   /hang-after-pay  0.01 pathUSD, settled on chain, but the paid answer is held 8 s (a buyer
//                    with a shorter timeout never learns the outcome)
//   /slow-once       0.01 pathUSD; challenges expire after 8 s, and the first paid request
//                    is held 9 s before mppx sees it (so mppx answers payment-expired)
//   /switch-payee    a bait: its first two challenges (0.01 pathUSD to the mppx recipient)
//                    have already expired; later ones are fresh but pay the pympp recipient

import { spawn } from "node:child_process";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createClient, custom, defineChain, http as httpTransport } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { Mppx, tempo } from "mppx/server";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ANVIL = path.join(HERE, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
const CHAIN_ID = 31337;
const TOKENS = {
  pathUSD: "0x20c0000000000000000000000000000000000000",
  alphaUSD: "0x20c0000000000000000000000000000000000001",
};
// Well-known anvil dev keys (mnemonic "test test ... junk"), #5..#9 then #0: one buyer per
// test, so concurrent tests never share an account. Each holds 2^64-1 of every TIP-20 token.
const BUYER_KEYS = [
  "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
  "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
  "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
  "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
  "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6",
  "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
];
// Recipients are fresh addresses (not dev accounts, never fee payers), so their pathUSD balance
// moves only by what buyers pay them.
const RECIPIENT = { mppx: "0x00000000000000000000000000000000000a11ce", pympp: "0x0000000000000000000000000000000000000b0b" };

const log = (...a) => process.stderr.write(`[mpp-peers +${Math.round(performance.now())}ms] ${a.join(" ")}\n`);

// ---------------------------------------------------------------- process lifetime
const children = [];
const servers = [];
let stopping = false;

function killChildren(signal) {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try { c.kill(signal); } catch { /* already gone */ }
    }
  }
}

async function stop(code, why) {
  if (stopping) return;
  stopping = true;
  log(`stopping (${why})`);
  for (const s of servers) { try { s.closeAllConnections?.(); s.close(); } catch { /* ignore */ } }
  killChildren("SIGTERM");
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline && children.some((c) => c.exitCode === null && c.signalCode === null)) {
    await new Promise((r) => setTimeout(r, 25));
  }
  killChildren("SIGKILL");
  process.exit(code);
}
process.on("exit", () => killChildren("SIGKILL"));
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => stop(0, sig));
process.on("uncaughtException", (e) => { log("uncaught:", e?.stack ?? e); stop(1, "uncaughtException"); });
process.on("unhandledRejection", (e) => { log("unhandled rejection:", e?.stack ?? e); stop(1, "unhandledRejection"); });
process.stdin.on("end", () => stop(0, "stdin closed"));
process.stdin.on("close", () => stop(0, "stdin closed"));
process.stdin.on("error", () => stop(0, "stdin error"));
process.stdin.resume();

// If node is SIGKILLed nothing above runs: a watchdog blocked on our pipe kills the children.
function startWatchdog(pids) {
  const w = spawn("sh", ["-c", `read _ignored; kill -9 ${pids.join(" ")} 2>/dev/null`], { stdio: ["pipe", "ignore", "ignore"] });
  w.stdin.on("error", () => {});
  children.push(w);
}

// Spawns a child and resolves with the first stdout match of `pattern`.
function startChild(tag, cmd, args, pattern, env) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...env } });
    children.push(child);
    let buf = "";
    let found = false;
    const timer = setTimeout(() => reject(new Error(`${tag}: not ready within 30 s`)), 30000);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      if (found) return;
      buf += d;
      const m = buf.match(pattern);
      if (m) { found = true; clearTimeout(timer); buf = ""; resolve({ match: m, pid: child.pid }); }
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => process.stderr.write(`[${tag}] ${d}`));
    child.on("error", (e) => { clearTimeout(timer); reject(e); });
    child.on("exit", (code, sig) => {
      clearTimeout(timer);
      if (!found) reject(new Error(`${tag}: exited early (${code ?? sig})`));
      else if (!stopping) { log(`${tag}: exited unexpectedly (${code ?? sig})`); stop(1, `${tag} died`); }
    });
  });
}

// ---------------------------------------------------------------- chain
const anvil = await startChild("anvil", ANVIL,
  ["--network", "tempo", "--hardfork", "t4", "--host", "127.0.0.1", "--port", "0", "--chain-id", String(CHAIN_ID)],
  /Listening on (127\.0\.0\.1:\d+)/);
const RPC = `http://${anvil.match[1]}`;
log(`anvil (tempo, t4) at ${RPC}`);

const chain = defineChain({
  id: CHAIN_ID,
  name: "anvil-tempo",
  nativeCurrency: { name: "USD", symbol: "USD", decimals: 6 },
  rpcUrls: { default: { http: [RPC] } },
});

// anvil 1.7.1 in Tempo mode runs eth_call with block timestamp 1, so mppx's pre-broadcast
// simulation of a Tempo transaction fails ("valid_before too far in the future"). For eth_call
// only, drop the fields that make the simulation time-dependent, and the gas limit (a
// keychain-signed transaction asks for more than anvil's eth_call allows); real broadcasts are
// untouched.
const base = httpTransport(RPC);
const transport = custom({
  async request({ method, params }) {
    if (method === "eth_call" && Array.isArray(params) && params[0] && typeof params[0] === "object") {
      const { validBefore, nonceKey, nonce, gas, ...call } = params[0];
      params = [call, ...params.slice(1)];
    }
    return base({ chain }).request({ method, params });
  },
});
const client = createClient({ chain, transport, pollingInterval: 50 });

// ---------------------------------------------------------------- mppx seller
const mppx = Mppx.create({
  methods: [tempo({ currency: TOKENS.pathUSD, recipient: RECIPIENT.mppx, chainId: CHAIN_ID, getClient: () => client })],
  secretKey: "tollgate-test-secret-key-0123456789abcdef",
  realm: "mppx.tollgate.test",
});

// /switch-payee's fresh challenges: the same price, another recipient.
const switched = Mppx.create({
  methods: [tempo({ currency: TOKENS.pathUSD, recipient: RECIPIENT.pympp, chainId: CHAIN_ID, getClient: () => client })],
  secretKey: "tollgate-test-secret-key-0123456789abcdef",
  realm: "mppx.tollgate.test",
});
let switchChallenges = 0;

const events = [];
let slowOnceHeld = false;
function record(e) {
  events.push({ ...e, at: Date.now() });
  log(Object.entries(e).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" "));
}

const b64url = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
const PROBLEM = (type, title, detail) =>
  JSON.stringify({ type: `https://paymentauth.org/problems/${type}`, title, status: 402, detail });

const routes = {
  "/weather": mppx.charge({ amount: "0.01", description: "weather report" }),
  "/mixed": mppx.charge({ amount: "0.01", description: "weather report" }),
  "/expensive": mppx.charge({ amount: "5", description: "expensive report" }),
  "/hang-after-pay": mppx.charge({ amount: "0.01", description: "slow answer" }),
};

// /mixed: a seller (such as aperture) that sends several challenges in one 402: a Bearer and an
// L402 challenge beside mppx's Payment challenge. Paid with the Payment one like /weather.
async function mixed(req, res, event) {
  const headers = new Headers();
  for (const [k, v] of Object.entries(req.headers)) if (typeof v === "string") headers.set(k, v);
  const result = await routes["/mixed"](new Request(`http://${req.headers.host}${req.url}`, { method: req.method, headers }));
  if (result.status === 402) {
    const challenge = result.challenge;
    const own = challenge.headers.get("www-authenticate");
    const out = {};
    challenge.headers.forEach((v, k) => { if (k !== "www-authenticate") out[k] = v; });
    res.writeHead(402, { ...out, "WWW-Authenticate": [
      `Bearer realm="mixed.tollgate.test", error="invalid_token"`,
      `L402 macaroon="AgEEbHNhdAJCAAA=", invoice="lnbcrt10n1pnotarealinvoice"`,
      own,
    ] });
    record({ ...event, status: 402 });
    return res.end(await challenge.text());
  }
  const paid = result.withReceipt(Response.json({ forecast: "sunny", seller: "mppx", path: "/mixed" }));
  const out = {};
  paid.headers.forEach((v, k) => { out[k] = v; });
  record({ ...event, status: paid.status, receipt: paid.headers.get("payment-receipt") });
  res.writeHead(paid.status, out);
  return res.end(await paid.text());
}

const mppxServer = http.createServer(async (req, res) => {
  const url = new URL(req.url, "http://x");
  const auth = req.headers.authorization ?? null;
  const event = { kind: "request", seller: "mppx", path: url.pathname, paid: typeof auth === "string" && /^payment\s/i.test(auth), accept_payment: req.headers["accept-payment"] ?? null };
  try {
    if (url.pathname === "/_log") {
      if (req.method === "DELETE") events.length = 0;
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify(events));
    }
    if (url.pathname === "/unknown-method") {
      res.setHeader("WWW-Authenticate", [
        `Payment id="unknown-1", realm="mppx.tollgate.test", method="lightning", intent="charge", request="${b64url({ amount: "100", currency: "sat" })}"`,
      ]);
      res.writeHead(402, { "content-type": "application/problem+json" });
      record({ ...event, status: 402 });
      return res.end(PROBLEM("payment-required", "Payment Required", "pay with lightning"));
    }
    if (url.pathname === "/problem") {
      res.writeHead(402, { "content-type": "application/problem+json" });
      record({ ...event, status: 402 });
      return res.end(PROBLEM("verification-failed", "Verification Failed", "no challenge here"));
    }
    if (url.pathname === "/mixed") return await mixed(req, res, event);
    let handler = routes[url.pathname];
    if (url.pathname === "/slow-once") {
      handler = mppx.charge({ amount: "0.01", description: "slow", expires: new Date(Date.now() + 8_000).toISOString() });
      if (event.paid && !slowOnceHeld) {
        slowOnceHeld = true;
        log("/slow-once: holding the first paid request 9 s");
        await new Promise((r) => setTimeout(r, 9_000));
      }
    }
    if (url.pathname === "/switch-payee") {
      handler = switchChallenges++ < 2
        ? mppx.charge({ amount: "0.01", description: "bait", expires: new Date(Date.now() - 60_000).toISOString() })
        : switched.charge({ amount: "0.01", description: "bait" });
    }
    if (url.pathname === "/expired") {
      handler = mppx.charge({ amount: "0.01", description: "stale", expires: new Date(Date.now() - 60_000).toISOString() });
    }
    if (!handler) {
      res.writeHead(404).end();
      return;
    }
    const result = await Mppx.toNodeListener(handler)(req, res);
    if (result.status === 402) {
      record({ ...event, status: 402, challenge: res.getHeader?.("www-authenticate") ?? null });
      return;
    }
    const receipt = res.getHeader("payment-receipt") ?? null;
    record({ ...event, status: 200, receipt });
    if (url.pathname === "/hang-after-pay") await new Promise((r) => setTimeout(r, 8_000));
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ forecast: "sunny", seller: "mppx", path: url.pathname }));
  } catch (e) {
    record({ ...event, status: 500, error: String(e?.message ?? e).slice(0, 300) });
    if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
    res.end("seller error");
  }
});

await new Promise((r) => mppxServer.listen(0, "127.0.0.1", r));
servers.push(mppxServer);
const MPPX = `http://127.0.0.1:${mppxServer.address().port}`;
log(`mppx seller at ${MPPX}`);

// ---------------------------------------------------------------- pympp seller
let pympp = null;
const at = process.argv.indexOf("--pympp");
if (at > 0 && process.argv[at + 1]) {
  const python = process.argv[at + 1];
  const started = await startChild("pympp", python, [path.join(HERE, "pympp_seller.py")], /^READY (http:\/\/127\.0\.0\.1:\d+)$/m, {
    TOLLGATE_MPP_RPC: RPC,
    TOLLGATE_MPP_CHAIN_ID: String(CHAIN_ID),
    TOLLGATE_MPP_CURRENCY: TOKENS.pathUSD,
    TOLLGATE_MPP_RECIPIENT: RECIPIENT.pympp,
  });
  pympp = { seller: started.match[1], recipient: RECIPIENT.pympp };
  log(`pympp seller at ${pympp.seller}`);
}

startWatchdog(children.map((c) => c.pid));
const info = {
  rpc: RPC,
  chain_id: CHAIN_ID,
  tokens: TOKENS,
  buyer_keys: BUYER_KEYS,
  buyers: BUYER_KEYS.map((k) => privateKeyToAccount(k).address),
  mppx: { seller: MPPX, recipient: RECIPIENT.mppx, amount_atomic: "10000" },
  pympp: pympp && { ...pympp, amount_atomic: "10000" },
};
process.stdout.write(JSON.stringify(info) + "\n");
log(`ready in ${Math.round(performance.now())} ms`);
