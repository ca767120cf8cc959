// The viem client start.mjs gives mppx for anvil 1.7.1 in Tempo mode, as a module for the MCP
// peers (mcp_seller.mjs, mcp_buyer.mjs). Same work-around as start.mjs (kept there unchanged):
// anvil runs eth_call with block timestamp 1, so for eth_call only drop validBefore, nonceKey,
// nonce and gas from the call object; real broadcasts are untouched.
import { createClient, custom, defineChain, http as httpTransport } from "viem";

export const CHAIN_ID = 31337;
export const PATH_USD = "0x20c0000000000000000000000000000000000000";

//
// Buyers (mcp_buyer.mjs) pass {scrubEstimateGas: true}: viem's eth_estimateGas for an expiring-nonce
// Tempo transaction (nonceKey 2^256-1, nonce = a time-derived value, validBefore) is refused by
// anvil ("expiring nonce transaction must have nonce == 0"), so the same fields are dropped there;
// and eth_fillTransaction is answered "method not found" (see below).
export function tempoClient(rpc, chainId = CHAIN_ID, { scrubEstimateGas = false } = {}) {
  const chain = defineChain({
    id: chainId,
    name: "anvil-tempo",
    nativeCurrency: { name: "USD", symbol: "USD", decimals: 6 },
    rpcUrls: { default: { http: [rpc] } },
  });
  const base = httpTransport(rpc);
  const transport = custom({
    async request({ method, params }) {
      // Buyers: anvil's eth_fillTransaction fails for these requests and viem retries it 4 times
      // (~1 s each) before filling locally; answer "method not found" at once (not retried).
      if (scrubEstimateGas && method === "eth_fillTransaction") {
        throw Object.assign(new Error("eth_fillTransaction disabled for anvil"), { code: -32601 });
      }
      if ((method === "eth_call" || (scrubEstimateGas && method === "eth_estimateGas")) && Array.isArray(params) && params[0] && typeof params[0] === "object") {
        const { validBefore, nonceKey, nonce, gas, ...call } = params[0];
        params = [call, ...params.slice(1)];
      }
      if (!process.env.TEMPO_RPC_DEBUG) return base({ chain }).request({ method, params });
      const t = performance.now();
      try { return await base({ chain }).request({ method, params }); } finally {
        process.stderr.write(`[tempo-rpc] ${method} ${Math.round(performance.now() - t)} ms\n`);
      }
    },
  });
  return createClient({ chain, transport, pollingInterval: 50 });
}

// Atomic units (6 decimals) -> the decimal string mppx's charge({amount}) takes.
export function atomicToDecimal(atomic) {
  const s = BigInt(atomic).toString().padStart(7, "0");
  const int = s.slice(0, -6).replace(/^0+(?=\d)/, "");
  const frac = s.slice(-6).replace(/0+$/, "");
  return frac ? `${int}.${frac}` : int;
}
