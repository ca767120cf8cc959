//! "Hosts" sharing one ledger, for the three-host test and bench: each its own directory
//! (config, tools, policy) with the real x402 v2 seller's `weather` (`{city}` in the URL, so
//! distinct arguments are distinct calls), the ledger of a [`Place`], and one root key.

#![allow(dead_code)]

use std::path::PathBuf;

use super::cli::tollgate;
use super::ledgers::{Backend, Place};
use super::x402_peer::X402Peers;

/// Host `i`: its own directory and the ledger of `place`, under `policy` (caps TOML). On
/// PostgreSQL each host has its own state directory and hosts after the first get the first
/// one's root key, copied (as the README says); on SQLite every host uses the place's one
/// state directory (one ledger file, one root key).
pub fn host(peers: &X402Peers, place: &Place, policy: &str, i: usize) -> PathBuf {
    let p = place.dir.path().join(format!("host-{i}"));
    std::fs::create_dir_all(p.join("tools")).unwrap();
    std::fs::create_dir_all(p.join("policies")).unwrap();
    let state = match place.backend {
        Backend::Postgres => p.join("state"),
        Backend::Sqlite => place.state().to_owned(),
    };
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(
        p.join("tollgate.toml"),
        format!(
            "tools_dir = \"tools\"\nstate_dir = \"{}\"\npolicy = \"hosts\"\n[approval]\n\
             listen = \"off\"\n[[assets]]\nnetwork = \"eip155:31337\"\naddress = \"{}\"\n\
             symbol = \"USDC\"\ndecimals = 6\n[rpc]\n\"eip155:31337\" = \"{}\"\n",
            state.display(),
            peers.str("/v2/usdc"),
            peers.str("/v2/rpc"),
        ),
    )
    .unwrap();
    place.configure(&p.join("tollgate.toml"));
    std::fs::write(
        p.join("policies/hosts.toml"),
        format!("{policy}\n[allow]\nnetworks = [\"eip155:31337\"]\nassets = [\"USDC\"]\n"),
    )
    .unwrap();
    std::fs::write(
        p.join("tools/seller.toml"),
        format!(
            "[[tool]]\nname = \"weather\"\ndescription = \"Weather from the x402 v2 seller\"\n\
             url = \"{}/weather?city={{city}}\"\nmax_price = \"0.01 USD\"\n\
             input_schema = {{ type = \"object\", properties = {{ city = {{ type = \"string\" }} }} }}\n",
            peers.seller("v2")
        ),
    )
    .unwrap();
    if i == 0 {
        tollgate(&p, &["init"]);
    } else if place.backend == Backend::Postgres {
        let first = place.dir.path().join("host-0/state/root.key");
        std::fs::copy(first, state.join("root.key")).unwrap();
    }
    p
}
