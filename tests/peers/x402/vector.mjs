#!/usr/bin/env node
// Reference EIP-3009 / EIP-712 vectors made by the reference TypeScript buyer code
// (@x402/core x402Client + @x402/evm ExactEvmScheme / ExactEvmSchemeV1 client schemes: exactly
// what @x402/fetch runs), for fixed inputs. The nonce and validBefore are random/time-based, so
// every run differs: run once and commit the output as vector.json.
//
//   node tests/peers/x402/vector.mjs > tests/peers/x402/vector.json
//
// A Rust test can rebuild the EIP-712 digest from `domain` + `message` (or from the decoded
// payload + requirements), sign it with `private_key` and must get `digest` and `signature` byte
// for byte (RFC 6979 deterministic ECDSA, low-s, v = 27/28), and can rebuild `header_value` as
// base64(header_json).
import { x402Client, x402HTTPClient } from "@x402/core/client";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { authorizationTypes } from "@x402/evm";
import {
  getAddress,
  hashDomain,
  hashStruct,
  hashTypedData,
  parseSignature,
  recoverTypedDataAddress,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";

const PRIVATE_KEY = "0x2a871d0798f97d79848a013d4936a73bf4cc922c825d33c1cf7073dff6d409c6"; // anvil dev key #9
const account = privateKeyToAccount(PRIVATE_KEY);

const client = new x402Client();
registerExactEvmScheme(client, { signer: account }); // v2 "eip155:*" + v1 network names
client.setSpendControls({ allowedAssets: true });
const http = new x402HTTPClient(client);

const V2_REQUIREMENTS = {
  scheme: "exact",
  network: "eip155:8453",
  amount: "10000",
  asset: "0x833589fCD6eDb6E08f4c3C32D4f71b54bdA02913",
  payTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
  maxTimeoutSeconds: 60,
  extra: { name: "USD Coin", version: "2" },
};
// v1: Base Sepolia USDC; its real EIP-712 name is "USDC" (x402 v1's table), version "2".
const V1_REQUIREMENTS = {
  scheme: "exact",
  network: "base-sepolia",
  maxAmountRequired: "10000",
  resource: "https://api.example.com/weather",
  description: "Weather report",
  mimeType: "application/json",
  payTo: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
  maxTimeoutSeconds: 60,
  asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
  outputSchema: { input: { type: "http", method: "GET", discoverable: true } },
  extra: { name: "USDC", version: "2" },
};

async function vector(name, chainId, paymentRequired, requirements) {
  const payload = await client.createPaymentPayload(paymentRequired);
  const headers = http.encodePaymentSignatureHeader(payload);
  const [[headerName, headerValue]] = Object.entries(headers);
  const headerJson = Buffer.from(headerValue, "base64").toString("utf8");
  if (headerJson !== JSON.stringify(payload)) throw new Error("header is not base64(JSON.stringify(payload))");

  const auth = payload.payload.authorization;
  const domain = {
    name: requirements.extra.name,
    version: requirements.extra.version,
    chainId,
    verifyingContract: getAddress(requirements.asset),
  };
  const message = {
    from: getAddress(auth.from),
    to: getAddress(auth.to),
    value: BigInt(auth.value),
    validAfter: BigInt(auth.validAfter),
    validBefore: BigInt(auth.validBefore),
    nonce: auth.nonce,
  };
  const typed = { domain, types: authorizationTypes, primaryType: "TransferWithAuthorization", message };
  const digest = hashTypedData(typed);
  const recovered = await recoverTypedDataAddress({ ...typed, signature: payload.payload.signature });
  if (recovered !== account.address) throw new Error(`${name}: signature recovers to ${recovered}`);
  const sig = parseSignature(payload.payload.signature);
  return {
    name,
    x402Version: payload.x402Version,
    header_name: headerName,
    header_value: headerValue,
    header_json: headerJson,
    payment_required: paymentRequired,
    requirements,
    payload,
    eip712: {
      domain,
      types: authorizationTypes,
      primaryType: "TransferWithAuthorization",
      message: Object.fromEntries(Object.entries(message).map(([k, v]) => [k, typeof v === "bigint" ? v.toString() : v])),
      domain_separator: hashDomain({ domain, types: { EIP712Domain: [
        { name: "name", type: "string" },
        { name: "version", type: "string" },
        { name: "chainId", type: "uint256" },
        { name: "verifyingContract", type: "address" },
      ] } }),
      struct_hash: hashStruct({ data: message, primaryType: "TransferWithAuthorization", types: authorizationTypes }),
      digest,
    },
    signature: payload.payload.signature,
    signature_parts: { r: sig.r, s: sig.s, v: Number(sig.v), yParity: sig.yParity },
  };
}

const v2 = await vector("v2", 8453, {
  x402Version: 2,
  error: "Payment required",
  resource: { url: "https://api.example.com/weather?city=Paris", description: "Weather report", mimeType: "application/json" },
  accepts: [V2_REQUIREMENTS],
}, V2_REQUIREMENTS);

// Same, but the seller's 402 declares an extension: the buyer echoes `extensions` verbatim.
const v2ext = await vector("v2_with_extensions", 8453, {
  x402Version: 2,
  error: "Payment required",
  resource: { url: "https://api.example.com/weather?city=Paris", description: "Weather report", mimeType: "application/json" },
  accepts: [V2_REQUIREMENTS],
  extensions: { "example-ext": { info: { note: "echoed as received" }, schema: { type: "object" } } },
}, V2_REQUIREMENTS);

const v1 = await vector("v1", 84532, {
  x402Version: 1,
  error: "X-PAYMENT header is required",
  accepts: [V1_REQUIREMENTS],
}, V1_REQUIREMENTS);

process.stdout.write(JSON.stringify({
  generated_by: "tests/peers/x402/vector.mjs with @x402/core@2.27.0, @x402/evm@2.27.0, viem@2.57.20",
  private_key: PRIVATE_KEY,
  address: account.address,
  notes: [
    "header_value = standard base64 (with padding) of header_json; header_json = JSON.stringify(payload) (no spaces, key order as in payload).",
    "v2 payload key order: x402Version, payload, [extensions], resource, accepted. `extensions` is omitted when the 402 had none; `resource` is the 402's resource object; `accepted` is the chosen accepts[] entry as received.",
    "v2 validAfter is \"0\", validBefore = now + maxTimeoutSeconds. v1 validAfter = now - 600, validBefore = now + maxTimeoutSeconds.",
    "v1 payload = {x402Version: 1, scheme, network, payload: {authorization, signature}} sent as X-PAYMENT; v2 sent as PAYMENT-SIGNATURE.",
    "authorization.value/validAfter/validBefore are decimal strings; nonce is 0x + 64 lowercase hex; from/to are checksummed.",
    "signature = 0x r(32) s(32) v(1), v = 27 or 28.",
  ],
  vectors: [v2, v2ext, v1],
}, null, 2) + "\n");
