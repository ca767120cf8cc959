//! Shared test support: a misbehaving-on-demand HTTP server, and running real MCP clients.
#![allow(dead_code)]

pub mod cli;
pub mod hosts;
pub mod http_server;
pub mod l402_peer;
pub mod ledgers;
pub mod mcp;
pub mod mcp_sellers;
pub mod mpp_peer;
pub mod seller;
pub mod stdio;
pub mod upstream;
pub mod x402_peer;
