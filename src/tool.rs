//! A tool as paying sees it, whatever carries its calls: the one view of a tool the checkout
//! engine, the rails and the rules need. A leaf: it knows no transport and no rail.

use serde_json::{Map, Value};

use crate::money::UsdMicros;

/// A tool as paying sees it: what it is called, where its calls go, and the owner's limits on
/// paying for it. An HTTP tool (`crate::catalog::HttpTool`) and a tool of a paid MCP server
/// (`crate::mcp_upstream`) are both one.
pub trait Tool: Sync {
    /// The name the caller knows it by (policy `tools`, credential tool caveats, receipts).
    fn name(&self) -> &str;
    /// The host its calls go to (policy `hosts`, credential host caveats).
    fn host(&self) -> String;
    /// The port its calls go to (credential host caveats may name one).
    fn port(&self) -> u16;
    /// Who sells it: the origin whose payments may serve every call to it (a kept L402 token
    /// is kept per origin and tool).
    fn origin(&self) -> String;
    /// The most one call may cost; `None`: tollgate never pays for it.
    fn max_price(&self) -> Option<UsdMicros>;
    /// Every payment needs a person's approval, whatever its amount.
    fn approval_always(&self) -> bool;
    /// Whether a call may pay at once, without asking first, at the price the seller asked
    /// on its last calls (on a rail that allows it: [`crate::rails::Rail::pays_ahead`]).
    fn pays_ahead(&self) -> bool {
        false
    }
    /// `text` with the tool's secrets (API keys from the environment) replaced.
    fn redact(&self, text: &str) -> String;
    /// Facts about where the call went, for its receipt (the MCP server and its own tool name).
    fn receipt_details(&self) -> Map<String, Value> {
        Map::new()
    }
}
