#!/usr/bin/env node
// node tests/peers/x402/balance.mjs RPC TOKEN ADDRESS  -> ERC-20 balanceOf as a decimal integer
import { main } from "./chain.mjs";
await main(["balance", ...process.argv.slice(2)]);
