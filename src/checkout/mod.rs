//! The transport-free parts of one paid call's saga that decide who may act on a payment.
//!
//! * [`lease`]: which live call owns an open payment (a lease it renews), giving a payment up
//!   when its call ends without an answer, and telling a dead owner from a live one.
//!
//! The rest of the saga (identify, offers, choose, approve, reserve, prove, send, settle,
//! receipt) still lives in `server::paid`; it moves here, away from MCP, step by step.

pub mod lease;
