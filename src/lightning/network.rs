//! Lightning networks, as BOLT11 prefixes and tollgate's configuration name them.

use std::fmt;
use std::str::FromStr;

/// A Lightning network, as a BOLT11 prefix names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Network {
    Bitcoin,
    Testnet,
    Signet,
    Regtest,
    Simnet,
}

impl Network {
    /// Every network, for messages.
    pub const ALL: [Network; 5] = [
        Network::Bitcoin,
        Network::Testnet,
        Network::Signet,
        Network::Regtest,
        Network::Simnet,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Network::Bitcoin => "bitcoin",
            Network::Testnet => "testnet",
            Network::Signet => "signet",
            Network::Regtest => "regtest",
            Network::Simnet => "simnet",
        }
    }

    /// The name as an offer's `network`: `lightning:bitcoin`, `lightning:regtest`, ...
    pub fn offer_name(self) -> String {
        format!("lightning:{}", self.name())
    }
}

impl FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Network, String> {
        let s = s.strip_prefix("lightning:").unwrap_or(s);
        Network::ALL
            .into_iter()
            .find(|n| n.name().eq_ignore_ascii_case(s) || (s == "mainnet" && *n == Network::Bitcoin))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not a Lightning network (one of bitcoin, testnet, signet, regtest, simnet)"
                )
            })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A 32-byte hash (a payment hash, a preimage) from hex; `None` when it is not one.
pub fn hash_from_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}
