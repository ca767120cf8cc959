//! Budgets: the owner's policy, and (with credentials and the ledger) the decision "may this
//! agent pay this offer".

pub mod caveat;
pub mod credential;
pub mod macaroon;
pub mod policy;
