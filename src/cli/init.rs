//! `tollgate init`: the state directory and the root key.

use std::path::PathBuf;

use tollgate::budget::credential::RootKey;
use tollgate::config::Config;

pub fn init(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let created = RootKey::create(&config.state_dir)?;
    let path = config
        .state_dir
        .join(tollgate::budget::credential::ROOT_KEY_FILE);
    if config.ledger.url.is_some() {
        // A shared ledger: the first host records its key's fingerprint; the others must
        // hold the same key (copied), which this checks now rather than at `serve`.
        let ledger = super::open_ledger(&config)?;
        super::agree_on_root_key(&*ledger, &RootKey::load(&config.state_dir)?, &config)?;
        println!(
            "the ledger {} is shared; this root key is the one it records",
            ledger.location()
        );
    }
    if created {
        println!("created the root key {} (mode 0600)", path.display());
    } else {
        println!(
            "the root key {} already exists; left as it is",
            path.display()
        );
    }
    Ok(())
}
