#!/usr/bin/env node
// node tests/peers/x402/tx.mjs RPC TXHASH  -> success | reverted | missing
import { main } from "./chain.mjs";
await main(["tx", ...process.argv.slice(2)]);
