//! The sandbox chain: a real EVM ([`revm`]) inside this process, running Circle's FiatToken
//! (USDC) contract from its published bytecode (`contracts/README.md` says where it comes
//! from).
//!
//! Owns: deploying and initializing the token exactly as a USDC deployment does (the
//! `SignatureChecker` library linked into `FiatTokenV2_2`, then `initialize`, `initializeV2`,
//! `initializeV2_1`, `initializeV2_2`, `configureMinter`, `mint`), executing transactions one
//! block each (like anvil's automine), read-only calls, and the receipts and logs a JSON-RPC
//! client asks for ([`super::rpc`]).
//!
//! Does not: check transaction signatures. Only the sandbox itself sends transactions (the
//! token's admin and the facilitator that settles x402 payments), so there is no mempool and
//! no signed transaction; what is checked is the buyer's EIP-3009 signature, and the token
//! contract checks that, on chain, as it would anywhere.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::{Address, B256, Bytes, Log, U256, keccak256};
use alloy::sol;
use alloy::sol_types::{SolCall, SolEvent};
use revm::context::TxEnv;
use revm::context::result::{ExecutionResult, Output};
use revm::database::{CacheDB, EmptyDB};
use revm::handler::{MainnetContext, MainnetEvm};
use revm::primitives::TxKind;
use revm::{Context, ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};

sol! {
    function initialize(string tokenName, string tokenSymbol, string tokenCurrency, uint8 tokenDecimals, address newMasterMinter, address newPauser, address newBlacklister, address newOwner);
    function initializeV2(string newName);
    function initializeV2_1(address lostAndFound);
    function initializeV2_2(address[] accountsToBlacklist, string newSymbol);
    function configureMinter(address minter, uint256 minterAllowedAmount) returns (bool);
    function mint(address to, uint256 amount) returns (bool);
    function balanceOf(address account) returns (uint256);
    function name() returns (string);
    function version() returns (string);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature);
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// Creation bytecode of Circle's `FiatTokenV2_2` (hex), with its library link placeholders.
const FIAT_TOKEN_HEX: &str = include_str!("contracts/FiatTokenV2_2.bin");
/// Creation bytecode of Circle's `SignatureChecker` library (hex).
const SIGNATURE_CHECKER_HEX: &str = include_str!("contracts/SignatureChecker.bin");
/// The placeholder solc leaves where `SignatureChecker`'s address goes.
const SIGNATURE_CHECKER_PLACEHOLDER: &str = "__$715109b5d747ea58b675c6ea3f0dba8c60$__";

/// Gas for one transaction: under the per-transaction cap of current forks (2^24), and
/// plenty for deploying the token.
const TX_GAS: u64 = 15_000_000;

/// The token's admin: owner, master minter, pauser, blacklister and minter (as in a test
/// deployment). No key: the sandbox sends its transactions without signatures.
pub const ADMIN: Address = Address::repeat_byte(0xad);
/// The account that settles x402 payments (sends `transferWithAuthorization`), as a
/// facilitator does.
pub const FACILITATOR: Address = Address::repeat_byte(0xfa);

/// Why something on the sandbox chain failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The bytecode files in `contracts/` are damaged.
    #[error("the shipped {0} bytecode is not valid hex")]
    Bytecode(&'static str),
    /// revm refused to run the transaction at all.
    #[error("the EVM refused the transaction: {0}")]
    Evm(String),
    /// A set-up transaction or a read-only call reverted.
    #[error("{what} reverted: {reason}")]
    Reverted { what: String, reason: String },
    /// A call's answer did not decode as its ABI says.
    #[error("{0} returned something that is not what its ABI says")]
    Decode(String),
}

/// What one executed transaction did.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The sandbox's transaction hash (a hash of sender, nonce and input: unique per chain).
    pub hash: B256,
    /// The block it was mined in (one transaction per block).
    pub block: u64,
    /// `false` when it reverted or halted (nothing it did was kept).
    pub success: bool,
    /// Return data, or revert data.
    pub output: Bytes,
    /// Events it emitted (empty when it failed).
    pub logs: Vec<Log>,
    /// The contract it created, for a deployment.
    pub created: Option<Address>,
    /// Gas it used (gas is free on the sandbox chain: the price is 0).
    pub gas_used: u64,
    /// The sender.
    pub from: Address,
    /// The contract called, `None` for a deployment.
    pub to: Option<Address>,
}

/// The chain's state. The EVM itself is built for each transaction around the database
/// (revm's EVM holds `Rc`s and is not `Send`; the database is, so the chain can be shared by
/// the servers' tasks).
struct Inner {
    db: CacheDB<EmptyDB>,
    chain_id: u64,
    block: u64,
    nonces: HashMap<Address, u64>,
    mined: Vec<Executed>,
    by_hash: HashMap<B256, usize>,
}

/// The in-process chain with the token deployed.
pub struct Chain {
    inner: Mutex<Inner>,
    chain_id: u64,
    token: Address,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chain(eip155:{}, token {})", self.chain_id, self.token)
    }
}

impl Chain {
    /// A fresh chain `chain_id` with USDC deployed and initialized (name "USD Coin",
    /// version "2", 6 decimals); no balances yet.
    pub fn start(chain_id: u64) -> Result<Chain, ChainError> {
        let mut inner = Inner {
            db: CacheDB::<EmptyDB>::default(),
            chain_id,
            block: 0,
            nonces: HashMap::new(),
            mined: Vec::new(),
            by_hash: HashMap::new(),
        };
        let library = decode_hex(SIGNATURE_CHECKER_HEX, "SignatureChecker")?;
        let library = inner.deploy(library, "deploying SignatureChecker")?;
        let linked = FIAT_TOKEN_HEX.trim().replace(
            SIGNATURE_CHECKER_PLACEHOLDER,
            &hex::encode(library.as_slice()),
        );
        let token = decode_hex(&linked, "FiatTokenV2_2")?;
        let token = inner.deploy(token, "deploying FiatTokenV2_2")?;
        let chain = Chain {
            inner: Mutex::new(inner),
            chain_id,
            token,
        };
        chain.admin(
            "initialize",
            initializeCall {
                tokenName: "USD Coin".into(),
                tokenSymbol: "USDC".into(),
                tokenCurrency: "USD".into(),
                tokenDecimals: 6,
                newMasterMinter: ADMIN,
                newPauser: ADMIN,
                newBlacklister: ADMIN,
                newOwner: ADMIN,
            }
            .abi_encode(),
        )?;
        chain.admin(
            "initializeV2",
            initializeV2Call {
                newName: "USD Coin".into(),
            }
            .abi_encode(),
        )?;
        chain.admin(
            "initializeV2_1",
            initializeV2_1Call {
                lostAndFound: ADMIN,
            }
            .abi_encode(),
        )?;
        chain.admin(
            "initializeV2_2",
            initializeV2_2Call {
                accountsToBlacklist: vec![],
                newSymbol: "USDC".into(),
            }
            .abi_encode(),
        )?;
        chain.admin(
            "configureMinter",
            configureMinterCall {
                minter: ADMIN,
                minterAllowedAmount: U256::MAX,
            }
            .abi_encode(),
        )?;
        Ok(chain)
    }

    /// The chain id (`eip155:<id>`).
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The USDC contract's address.
    pub fn token(&self) -> Address {
        self.token
    }

    /// The latest block's number.
    pub fn block_number(&self) -> u64 {
        self.lock().block
    }

    /// Mints `amount` atomic units (6 decimals) to `to`, as the token's minter.
    pub fn mint(&self, to: Address, amount: u128) -> Result<Executed, ChainError> {
        self.admin(
            "mint",
            mintCall {
                to,
                amount: U256::from(amount),
            }
            .abi_encode(),
        )
    }

    /// `balanceOf(owner)`, read from the token contract.
    pub fn balance_of(&self, owner: Address) -> Result<u128, ChainError> {
        let out = self.call(self.token, balanceOfCall { account: owner }.abi_encode())?;
        let balance = balanceOfCall::abi_decode_returns(&out)
            .map_err(|_| ChainError::Decode("balanceOf".into()))?;
        u128::try_from(balance).map_err(|_| ChainError::Decode("balanceOf".into()))
    }

    /// The token's EIP-712 domain name and version (`name()`, `version()`).
    pub fn token_domain(&self) -> Result<(String, String), ChainError> {
        let name = self.call(self.token, nameCall {}.abi_encode())?;
        let version = self.call(self.token, versionCall {}.abi_encode())?;
        Ok((
            nameCall::abi_decode_returns(&name).map_err(|_| ChainError::Decode("name".into()))?,
            versionCall::abi_decode_returns(&version)
                .map_err(|_| ChainError::Decode("version".into()))?,
        ))
    }

    /// Settles an EIP-3009 authorization: the facilitator sends
    /// `transferWithAuthorization(…, signature)` to the token, which checks the signature, the
    /// validity window and the nonce. A revert comes back as `success: false`.
    pub fn transfer_with_authorization(
        &self,
        call: transferWithAuthorizationCall,
    ) -> Result<Executed, ChainError> {
        self.send(FACILITATOR, Some(self.token), call.abi_encode())
    }

    /// A read-only call (`eth_call` at the latest block): nothing is committed.
    pub fn call(&self, to: Address, data: Vec<u8>) -> Result<Bytes, ChainError> {
        let mut inner = self.lock();
        let tx = TxEnv::builder()
            .caller(Address::ZERO)
            .kind(TxKind::Call(to))
            .data(data.into())
            .gas_limit(TX_GAS)
            .gas_price(0)
            .chain_id(Some(self.chain_id))
            .build_fill();
        let timestamp = crate::money::now_unix();
        let block = inner.block;
        let mut evm = inner.evm(block, timestamp);
        let result = evm.transact(tx);
        inner.db = evm.ctx.journaled_state.database;
        let result = result.map_err(|e| ChainError::Evm(format!("{e:?}")))?;
        match result.result {
            ExecutionResult::Success { output, .. } => Ok(output.into_data()),
            ExecutionResult::Revert { output, .. } => Err(ChainError::Reverted {
                what: "eth_call".into(),
                reason: revert_reason(&output),
            }),
            ExecutionResult::Halt { reason, .. } => Err(ChainError::Reverted {
                what: "eth_call".into(),
                reason: format!("{reason:?}"),
            }),
        }
    }

    /// A mined transaction by hash.
    pub fn transaction(&self, hash: &B256) -> Option<Executed> {
        let inner = self.lock();
        inner.by_hash.get(hash).map(|i| inner.mined[*i].clone())
    }

    /// Every mined transaction from block `from` to block `to` (inclusive), oldest first.
    pub fn transactions(&self, from: u64, to: u64) -> Vec<Executed> {
        let inner = self.lock();
        inner
            .mined
            .iter()
            .filter(|t| (from..=to).contains(&t.block))
            .cloned()
            .collect()
    }

    fn admin(&self, what: &str, data: Vec<u8>) -> Result<Executed, ChainError> {
        let done = self.send(ADMIN, Some(self.token), data)?;
        if !done.success {
            return Err(ChainError::Reverted {
                what: what.to_owned(),
                reason: revert_reason(&done.output),
            });
        }
        Ok(done)
    }

    /// Executes one transaction in a new block and commits it.
    fn send(
        &self,
        from: Address,
        to: Option<Address>,
        data: Vec<u8>,
    ) -> Result<Executed, ChainError> {
        self.lock().execute(from, to, data)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the EVM half-committed (revm commits
        // at the end), so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Inner {
    /// An EVM over the database (moved in; the caller moves it back) at block `number`.
    fn evm(&mut self, number: u64, timestamp: u64) -> MainnetEvm<MainnetContext<CacheDB<EmptyDB>>> {
        let chain_id = self.chain_id;
        Context::mainnet()
            .modify_cfg_chained(|cfg| {
                cfg.chain_id = chain_id;
                // Nonces are kept by `execute` (no signed transactions to replay).
                cfg.disable_nonce_check = true;
            })
            .modify_block_chained(|block| {
                block.number = U256::from(number);
                block.timestamp = U256::from(timestamp);
                block.basefee = 0;
                block.gas_limit = 30_000_000;
            })
            .with_db(std::mem::take(&mut self.db))
            .build_mainnet()
    }

    fn deploy(&mut self, code: Vec<u8>, what: &str) -> Result<Address, ChainError> {
        let done = self.execute(ADMIN, None, code)?;
        match (done.success, done.created) {
            (true, Some(address)) => Ok(address),
            _ => Err(ChainError::Reverted {
                what: what.to_owned(),
                reason: revert_reason(&done.output),
            }),
        }
    }

    fn execute(
        &mut self,
        from: Address,
        to: Option<Address>,
        data: Vec<u8>,
    ) -> Result<Executed, ChainError> {
        let nonce = *self.nonces.get(&from).unwrap_or(&0);
        let chain_id = self.chain_id;
        self.block += 1;
        let mut preimage = Vec::with_capacity(data.len() + 36);
        preimage.extend_from_slice(&chain_id.to_be_bytes());
        preimage.extend_from_slice(from.as_slice());
        preimage.extend_from_slice(&nonce.to_be_bytes());
        preimage.extend_from_slice(&data);
        let hash = keccak256(&preimage);
        let tx = TxEnv::builder()
            .caller(from)
            .kind(to.map_or(TxKind::Create, TxKind::Call))
            .data(data.into())
            .gas_limit(TX_GAS)
            .gas_price(0)
            .nonce(nonce)
            .chain_id(Some(chain_id))
            .build_fill();
        let block = self.block;
        let mut evm = self.evm(block, crate::money::now_unix());
        let result = evm.transact_commit(tx);
        self.db = evm.ctx.journaled_state.database;
        let result = result.map_err(|e| ChainError::Evm(format!("{e:?}")))?;
        self.nonces.insert(from, nonce + 1);
        let gas_used = result.tx_gas_used();
        let (success, output, logs, created) = match result {
            ExecutionResult::Success { output, logs, .. } => {
                let created = match &output {
                    Output::Create(_, address) => *address,
                    Output::Call(_) => None,
                };
                (true, output.into_data(), logs, created)
            }
            ExecutionResult::Revert { output, .. } => (false, output, Vec::new(), None),
            ExecutionResult::Halt { .. } => (false, Bytes::new(), Vec::new(), None),
        };
        let executed = Executed {
            hash,
            block: self.block,
            success,
            output,
            logs,
            created,
            gas_used,
            from,
            to,
        };
        self.by_hash.insert(hash, self.mined.len());
        self.mined.push(executed.clone());
        Ok(executed)
    }
}

fn decode_hex(text: &str, what: &'static str) -> Result<Vec<u8>, ChainError> {
    hex::decode(text.trim().trim_start_matches("0x")).map_err(|_| ChainError::Bytecode(what))
}

/// A revert's reason: `Error(string)` decoded, else the data in hex (cut short).
pub fn revert_reason(output: &[u8]) -> String {
    if output.is_empty() {
        return "no reason given".to_owned();
    }
    alloy::sol_types::decode_revert_reason(output).unwrap_or_else(|| {
        let shown: String = hex::encode(output).chars().take(80).collect();
        format!("0x{shown}")
    })
}

/// The topic0 of the token's `AuthorizationUsed` event.
pub fn authorization_used_topic() -> B256 {
    AuthorizationUsed::SIGNATURE_HASH
}

/// The topic0 of the token's `Transfer` event.
pub fn transfer_topic() -> B256 {
    Transfer::SIGNATURE_HASH
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_usdc_and_mints_to_a_balance() {
        let chain = Chain::start(31337).unwrap();
        assert_eq!(
            chain.token_domain().unwrap(),
            ("USD Coin".to_owned(), "2".to_owned())
        );
        let owner = Address::repeat_byte(0x11);
        assert_eq!(chain.balance_of(owner).unwrap(), 0);
        chain.mint(owner, 5_000_000).unwrap();
        assert_eq!(chain.balance_of(owner).unwrap(), 5_000_000);
    }
}
