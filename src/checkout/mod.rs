//! The checkout engine: one paid call's saga, free of any transport.
//!
//! A transport (today the MCP server over stdio) hands [`Checkout::call`] a tool, its checked
//! arguments and the request they make, and the caller it identified
//! ([`Checkout::identify`]); it gets back a typed [`Outcome`]. In between, the engine runs
//! the saga: send → 402 → read every offer → choose one under the rules → approve (through
//! the transport's [`Port`], which is how a person is asked) → reserve against every cap →
//! prove → send once more → read the settlement → commit the receipt. What a transport does
//! is translate: requests in, outcomes out, progress, cancellation, and its own way to ask a
//! person.
//!
//! * [`ahead`]: paying at once, at the price a tool's seller asked on its last calls.
//! * [`lease`]: which live call owns an open payment (a lease it renews), giving a payment up
//!   when its call ends without an answer, and telling a dead owner from a live one.
//! * [`engine`]: the saga.
//! * [`approve`]: the approval step's decisions (when a person must decide, what they decide
//!   on, using an approval once), without saying how a person is asked.
//! * [`receipt`]: the one receipt builder, from the [`Charge`] a reservation records.
//! * [`reconcile`]: settling payments whose outcome is unknown, by what their rail says.
//!
//! Where the payment protocols differ, the engine asks the offer's rail ([`crate::rails`]).

mod ahead;
pub mod approve;
mod caller;
mod engine;
pub mod lease;
pub mod receipt;
pub mod reconcile;

use std::future::Future;
use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub use crate::ledger::blocking;
pub use crate::pay::{Charge, Payment};
pub use crate::tool::Tool;
pub use approve::{Ask, Gate, Redemption};
pub use engine::tool_headers;

use crate::budget::credential::{Credential, RootKey};
use crate::budget::policy::Policy;
use crate::catalog::{HttpTool, UpstreamRequest};
use crate::ledger::Ledger;
use crate::pay::assets::Asset;
use crate::rails::Rails;
use crate::upstream::{Answer, Upstream};

/// Everything paying needs: the owner's policy, the assets tollgate can value, the rails
/// (with their wallets), the ledger, what tells who is calling (the root key, the process's
/// own token), and the upstream HTTP client. One per process, shared by every call.
pub struct Checkout {
    pub policy: Policy,
    pub assets: Vec<Asset>,
    /// Every payment protocol, with the wallet that pays it.
    pub rails: Arc<Rails>,
    /// The root key credentials are verified under (absent until `tollgate init`).
    pub root: Option<RootKey>,
    /// `TOLLGATE_TOKEN` of the process: the caller when a request carries no token.
    pub env_token: Option<String>,
    /// The credential of the policy's default profile: the caller when there is no token at
    /// all (see [`Checkout::use_default_profile`]).
    pub profile_token: Option<String>,
    /// How a person is asked to approve a payment above the threshold.
    pub approval: crate::approval::Settings,
    /// Budgets, reservations, pending payments, receipts, revocations.
    pub ledger: Arc<Ledger>,
    /// The payments this process's live calls own (leases renewed while they run).
    pub leases: Arc<lease::Leases>,
    /// Every upstream request of a call goes through it (`[upstream]` limits).
    pub upstream: Upstream,
    /// One payment per service at a time on rails whose payment serves every call to it.
    flights: Flights,
    /// Credentials whose budgets this process has recorded in the tree of budgets.
    registered: std::sync::Mutex<std::collections::HashSet<String>>,
    /// What each tool's seller asked for on its last calls (paying ahead).
    ahead: ahead::Ahead,
    /// Receipts being committed after their answer went back ([`Checkout::finish_writes`]).
    writes: Arc<crate::in_flight::InFlight>,
}

impl Checkout {
    pub fn new(
        policy: Policy,
        assets: Vec<Asset>,
        rails: Arc<Rails>,
        ledger: Arc<Ledger>,
        upstream: Upstream,
    ) -> Checkout {
        Checkout {
            policy,
            assets,
            rails,
            root: None,
            env_token: None,
            profile_token: None,
            approval: crate::approval::Settings::default(),
            leases: lease::Leases::new(ledger.clone()),
            ledger,
            upstream,
            flights: Default::default(),
            registered: Default::default(),
            writes: Default::default(),
            ahead: Default::default(),
        }
    }

    /// Waits until every receipt committed after its answer went back is in the ledger: a
    /// transport calls this before the process exits, and before it answers from the ledger
    /// (a budget, the receipts).
    pub async fn finish_writes(&self) {
        self.writes.idle().await;
    }
}

/// Where a call is sold: what the engine sends one call to, unpaid or with a payment's (or a
/// kept credential's) headers, and what came back. An HTTP endpoint ([`HttpCounter`]) speaks
/// the rails' wire as is; a paid MCP server translates its payment messages to and from it.
pub trait Counter: Sync {
    /// A successful answer, as the transport hands it back to its caller.
    type Answer: Send;

    /// The tool being called.
    fn tool(&self) -> &dyn Tool;

    /// The URL this call is sold at, when it has one: a payment made ahead names it as the
    /// resource it pays for.
    fn resource_url(&self) -> Option<String> {
        None
    }

    /// Sends the call once with `headers` added (a proof's, a kept credential's; none:
    /// unpaid). `progress` takes short lines about where the call is.
    fn send<'a>(
        &'a self,
        headers: &'a [(HeaderName, HeaderValue)],
        progress: &'a (dyn Fn(String) + Sync),
    ) -> futures_util::future::BoxFuture<'a, Result<Sold<Self::Answer>, String>>;
}

/// What one sending of a call brought back.
pub enum Sold<A> {
    /// The seller asks for payment (again): its challenge, on the rails' HTTP wire.
    PaymentRequired { headers: HeaderMap, body: Vec<u8> },
    /// Any other answer, with the headers its settlement may be read from.
    Answered { answer: A, headers: HeaderMap },
}

/// An HTTP tool's counter: its request, sent by the upstream client under the tool's limits.
pub struct HttpCounter<'a> {
    pub tool: &'a HttpTool,
    /// The request the arguments make (unpaid).
    pub request: UpstreamRequest,
    pub upstream: &'a Upstream,
}

/// One call of a tool, as the transport checked it.
pub struct Call<'a, C> {
    /// Where the call goes (the tool and its request).
    pub counter: &'a C,
    /// The arguments, validated against the tool's input schema.
    pub arguments: &'a Map<String, Value>,
    /// Who is calling ([`Checkout::identify`]); `None`: the policy alone applies.
    pub caller: Option<&'a Credential>,
}

impl<C: Counter> Call<'_, C> {
    pub fn tool(&self) -> &dyn Tool {
        self.counter.tool()
    }
}

/// How a call ended.
// An answer is large (serde_json's `preserve_order` maps); an outcome is made once per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Outcome<H, A = Answer> {
    /// The upstream answered: its answer, what was paid for it (a receipt, or the kept L402
    /// token it was served on; nothing when it was free), and the rail's settlement metadata
    /// for the result's `_meta` (x402's decoded payment response, MPP's receipt).
    Answered {
        answer: A,
        payment: Option<Payment>,
        meta: Map<String, Value>,
    },
    /// The call ended without the upstream's answer. The message says why and what happened
    /// to any money (nothing paid, paid with which receipt, or pending), in words a model can
    /// act on; secrets in the tool's headers are already redacted from it.
    Failed(String),
    /// The caller cancelled the call; anything already signed and sent stays pending.
    Cancelled,
    /// The transport stopped the call itself while asking a person (an `approval_required`
    /// result, an input request): its own answer. Nothing was reserved or signed.
    Halted(H),
}

impl<H, A> Outcome<H, A> {
    fn failed(message: impl Into<String>) -> Outcome<H, A> {
        Outcome::Failed(message.into())
    }
}

/// What the engine needs from the transport a call came in on.
pub trait Port: Sync {
    /// The transport's own answer when it stops a call while asking a person.
    type Halt: Send;

    /// Tells the caller how the call is going (one short line; may be dropped).
    fn progress(&self, message: String);

    /// Resolves when the caller cancels the call.
    fn cancelled(&self) -> impl Future<Output = ()> + Send;

    /// A person must decide whether `ask` may be paid (the engine has checked the thresholds
    /// and that an approval secret exists). Ask in the transport's own way, or use the
    /// approval the call brought back ([`Checkout::redeem`]).
    fn approve(&self, ask: &Ask) -> impl Future<Output = Gate<Self::Halt>> + Send;
}

/// One payment at a time per origin and service in this process, on a rail whose payment
/// serves every call to the service (an L402 token). Calls that met the same challenge while
/// another call was paying it wait, then send what that call kept instead of paying again
/// (parallel tool calls are common in agents).
#[derive(Default)]
struct Flights(std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl Flights {
    /// Waits for, then holds, the right to pay `tool`'s service.
    async fn enter(&self, tool: &dyn Tool) -> tokio::sync::OwnedMutexGuard<()> {
        let key = format!("{} {}", tool.origin(), tool.name());
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(key).or_default().clone()
        };
        lock.lock_owned().await
    }
}
