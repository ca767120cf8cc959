// Decrypts a Web3 Secret Storage keystore with ethers (not tollgate's code) and prints the
// address it holds; never the key. Usage: node decrypt.mjs KEYSTORE PASSWORD_FILE
import { readFileSync } from "node:fs";
import { Wallet } from "ethers";

const [keystore, passwordFile] = process.argv.slice(2);
const json = readFileSync(keystore, "utf8");
const password = readFileSync(passwordFile, "utf8").split(/\r?\n/)[0];
const wallet = await Wallet.fromEncryptedJson(json, password);
process.stdout.write(JSON.stringify({ address: wallet.address }) + "\n");
