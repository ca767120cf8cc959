//! tollgate: an MCP server that lets AI agents pay for tools.
//!
//! Paid HTTP endpoints appear to an agent as ordinary MCP tools. Where a path through the code
//! starts, by module:
//!
//! * [`config`]: the one config file (`tollgate.toml`); [`toml_input`]: reading any TOML the
//!   owner wrote, with errors that name file and key; [`canonical`]: JSON in one key order.
//! * [`checkout`]: the saga of one paid call, free of any transport (the checkout engine),
//!   leases of live calls, the receipt builder, reconciliation of unknown outcomes.
//! * [`tool`]: a tool as paying sees it (an HTTP tool, a paid MCP server's tool).
//! * [`catalog`]: tool definitions (`tools/*.toml`), checked at start, turned into requests.
//! * [`mcp_upstream`]: paid MCP servers (`[[mcp_upstream]]`): their tools, re-exported, and
//!   their MCP payment messages translated to the rails' wire.
//! * [`upstream`]: one HTTP call with every limit (timeouts, size, same-origin redirects).
//! * [`pay`]: what a `402 Payment Required` asks for, choosing an offer under the rules.
//! * [`rails`]: one [`rails::Rail`] per payment protocol (x402, L402, MPP) and their registry.
//! * [`ledger`]: budgets, reservations, receipts behind traits (SQLite, PostgreSQL).
//! * [`lightning`]: the Lightning backends that pay L402 invoices (LNbits, LND REST).
//! * [`approval`]: a person's yes above the threshold: the rule, the facts an approval is
//!   bound to, sealed request state, the local approval page.
//! * [`server`]: the MCP server (rmcp), the only module that knows MCP.
//! * [`money`]: integer money (micro-USD); never a float.
//! * [`demo`]: `tollgate demo`: a sandbox (in-process EVM with USDC, a paid x402 API) and a
//!   scripted agent; not on the payment path.
//!
//! `ARCHITECTURE.md` at the repository root has the bird's-eye view and the invariants.

pub mod approval;
pub mod budget;
pub mod canonical;
pub mod catalog;
pub mod checkout;
pub mod config;
pub mod demo;
pub mod in_flight;
pub mod ledger;
pub mod lightning;
pub mod loopback;
pub mod mcp_upstream;
pub mod money;
pub mod pay;
pub mod rails;
pub mod rpc;
pub mod server;
pub mod toml_input;
pub mod tool;
pub mod upstream;
pub mod wallet;

/// Installs ring as the process's rustls crypto provider. reqwest, rmcp's HTTP transport and
/// mpp's RPC client are built without a default one, and building a client before a provider
/// is installed panics: every place that builds one calls this first. A second install is a
/// no-op.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
