// An L402 seller for tollgate's tests, in the way aperture (Lightning Labs' L402 proxy) sells:
// it asks LNbits for an invoice, mints a macaroon (npm `macaroon`, a port of go-macaroon) whose
// identifier has aperture's layout, u16 version 0 || payment_hash[32] || token_id[32], with
// location "lsat" and caveats `services=<service>:0` and `<service>_valid_until=<unix>`, and
// answers 402 with BOTH challenges aperture sends:
//   WWW-Authenticate: LSAT macaroon="<std base64>", invoice="<bolt11>"
//   WWW-Authenticate: L402 macaroon="<std base64>", invoice="<bolt11>"
// A request with `Authorization: L402|LSAT <macaroon>:<hex preimage>` is served when the
// macaroon's HMAC chain verifies under the root key, its caveats hold, and
// sha256(preimage) equals the payment hash in its identifier.
//
// Environment: LNBITS_URL, LNBITS_INKEY (the payee wallet's invoice key); PRICE_SATS
// (default 21); BAIT_SATS (default 50000); TOKEN_VALID_SECS (default 3600).
// Prints one JSON line {"url": "http://127.0.0.1:PORT"} when listening; stops when stdin closes.
//
// Paths: /<mode>/<service>, where mode is how the seller behaves:
//   normal      as above
//   expired     the invoice has expired by the time the 402 is sent (expiry 1 s, answer after 2 s)
//   amountless  the invoice names no amount (forged with npm `bolt11`: LNbits refuses to issue one)
//   wronghash   the macaroon's identifier carries a payment hash that is not the invoice's
//   bait        the invoice is for BAIT_SATS, far above any sane cap
//   reject      never accepts a token, paid or not (a seller that lost its root key)
//   version     the challenges carry version="0" and token= instead of macaroon=
//   garbled     the macaroon is base64 that is not a macaroon (it cannot be bound to the invoice)
//   foreignid   a valid macaroon whose identifier is not aperture's (no payment hash in it)
// Admin: POST /admin/rotate (new root key: every token issued so far is refused),
//        GET /admin/stats ({challenges, served, refused}).
import http from "node:http";
import crypto from "node:crypto";
import macaroon from "macaroon";
import bolt11 from "bolt11";

const LNBITS_URL = process.env.LNBITS_URL;
const LNBITS_INKEY = process.env.LNBITS_INKEY;
const PRICE_SATS = Number(process.env.PRICE_SATS || 21);
const BAIT_SATS = Number(process.env.BAIT_SATS || 50000);
const TOKEN_VALID_SECS = Number(process.env.TOKEN_VALID_SECS || 3600);
if (!LNBITS_URL || !LNBITS_INKEY) {
  console.error("seller: LNBITS_URL and LNBITS_INKEY are required");
  process.exit(2);
}

let rootKey = crypto.randomBytes(32);
const stats = { challenges: 0, served: 0, refused: 0 };
const log = (...a) => console.error("seller:", ...a);

async function lnbitsInvoice(sats, expiry) {
  const body = { out: false, amount: sats, memo: "tollgate test seller" };
  if (expiry) body.expiry = expiry;
  const r = await fetch(`${LNBITS_URL}/api/v1/payments`, {
    method: "POST",
    headers: { "X-Api-Key": LNBITS_INKEY, "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!r.ok) throw new Error(`LNbits invoice: HTTP ${r.status} ${await r.text()}`);
  const j = await r.json();
  return { bolt11: j.bolt11 || j.payment_request, paymentHash: j.payment_hash };
}

function amountlessInvoice() {
  const paymentHash = crypto.randomBytes(32).toString("hex");
  const encoded = bolt11.encode({
    network: { bech32: "bc", pubKeyHash: 0, scriptHash: 5, validWitnessVersions: [0, 1] },
    timestamp: Math.floor(Date.now() / 1000),
    tags: [
      { tagName: "payment_hash", data: paymentHash },
      { tagName: "description", data: "amountless" },
      { tagName: "expire_time", data: 3600 },
    ],
  });
  const signed = bolt11.sign(encoded, crypto.randomBytes(32).toString("hex"));
  return { bolt11: signed.paymentRequest, paymentHash };
}

function mint(paymentHashHex, service) {
  const id = Buffer.alloc(66);
  id.writeUInt16BE(0, 0);
  Buffer.from(paymentHashHex, "hex").copy(id, 2);
  crypto.randomBytes(32).copy(id, 34);
  const m = macaroon.newMacaroon({ identifier: id, location: "lsat", rootKey, version: 2 });
  m.addFirstPartyCaveat(`services=${service}:0`);
  m.addFirstPartyCaveat(`${service}_valid_until=${Math.floor(Date.now() / 1000) + TOKEN_VALID_SECS}`);
  return Buffer.from(m.exportBinary()).toString("base64");
}

// Why the token in `auth` is not good for `service`, or null if it is.
function checkToken(auth, service) {
  const m = /^(L402|LSAT)\s+([A-Za-z0-9+/=_-]+):([0-9a-fA-F]{64})$/.exec(auth.trim());
  if (!m) return "malformed Authorization";
  let mac;
  try {
    mac = macaroon.importMacaroon(Buffer.from(m[2], "base64"));
  } catch (e) {
    return `bad macaroon: ${e.message}`;
  }
  const id = Buffer.from(mac.identifier);
  if (id.length !== 66 || id.readUInt16BE(0) !== 0) return "identifier is not aperture's";
  const hash = id.subarray(2, 34);
  const preimage = Buffer.from(m[3], "hex");
  if (!crypto.createHash("sha256").update(preimage).digest().equals(hash)) {
    return "preimage does not match the payment hash";
  }
  try {
    mac.verify(rootKey, (cond) => {
      const [k, v] = cond.split("=");
      if (k === "services") {
        return v.split(",").some((s) => s.split(":")[0] === service) ? null : "wrong service";
      }
      if (k.endsWith("_valid_until")) {
        return Number(v) > Date.now() / 1000 ? null : "expired";
      }
      return `unknown caveat ${k}`;
    });
  } catch (e) {
    return `macaroon does not verify: ${e.message}`;
  }
  return null;
}

async function challenge(res, mode, service) {
  stats.challenges += 1;
  let inv;
  if (mode === "amountless") inv = amountlessInvoice();
  else if (mode === "expired") inv = await lnbitsInvoice(PRICE_SATS, 1);
  else inv = await lnbitsInvoice(mode === "bait" ? BAIT_SATS : PRICE_SATS);
  const idHash = mode === "wronghash" ? crypto.randomBytes(32).toString("hex") : inv.paymentHash;
  let mac = mint(idHash, service);
  if (mode === "garbled") mac = crypto.randomBytes(48).toString("base64");
  if (mode === "foreignid") {
    const m = macaroon.newMacaroon({ identifier: crypto.randomBytes(40), location: "lsat", rootKey, version: 2 });
    m.addFirstPartyCaveat(`services=${service}:0`);
    mac = Buffer.from(m.exportBinary()).toString("base64");
  }
  if (mode === "expired") await new Promise((r) => setTimeout(r, 2100));
  const params =
    mode === "version"
      ? `version="0", token="${mac}", invoice="${inv.bolt11}", realm="tests"`
      : `macaroon="${mac}", invoice="${inv.bolt11}"`;
  res.writeHead(402, {
    "Content-Type": "application/json",
    "WWW-Authenticate": [`LSAT ${params}`, `L402 ${params}`],
  });
  res.end(JSON.stringify({ error: "payment required" }));
}

const server = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, "http://x");
    const parts = url.pathname.split("/").filter(Boolean);
    if (parts[0] === "admin" && parts[1] === "rotate" && req.method === "POST") {
      rootKey = crypto.randomBytes(32);
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ rotated: true }));
    }
    if (parts[0] === "admin" && parts[1] === "stats") {
      res.writeHead(200, { "Content-Type": "application/json" });
      return res.end(JSON.stringify(stats));
    }
    const [mode, service] = parts;
    const modes = ["normal", "expired", "amountless", "wronghash", "bait", "reject", "version", "garbled", "foreignid"];
    if (!modes.includes(mode) || !service) {
      res.writeHead(404, { "Content-Type": "application/json" });
      return res.end(JSON.stringify({ error: `no such path; modes: ${modes.join(", ")}` }));
    }
    const auth = req.headers["authorization"];
    if (auth) {
      const why = mode === "reject" ? "this seller accepts no token" : checkToken(auth, service);
      if (why === null) {
        stats.served += 1;
        res.writeHead(200, { "Content-Type": "application/json" });
        return res.end(
          JSON.stringify({ service, forecast: "sunny", city: url.searchParams.get("city") }),
        );
      }
      stats.refused += 1;
      log(`refused a token for ${service}: ${why}`);
    }
    await challenge(res, mode, service);
  } catch (e) {
    log(e.stack || String(e));
    res.writeHead(500, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ error: String(e.message || e) }));
  }
});

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}` }));
});
process.stdin.on("end", () => process.exit(0));
process.stdin.on("close", () => process.exit(0));
process.stdin.resume();
