//! `tollgate serve`: the MCP server over stdio.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use rmcp::ServiceExt as _;

use tollgate::budget::credential::{CredentialError, RootKey};
use tollgate::checkout::Checkout;
use tollgate::rails::{Equipment, Rails};
use tollgate::server::Tollgate;
use tollgate::upstream::Upstream;
use tollgate::wallet::EvmWallet;

use super::load;
use super::reconcile::log_reconciled;

pub fn serve(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (config, catalog, policy) = load(config).map_err(|problems| {
        let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the configuration has problems:\n{}", lines.join("\n"))
    })?;
    for warning in &catalog.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let catalog = Arc::new(catalog);
        let upstream = Upstream::new(&config.upstream);
        // Loading root certificates takes tens of milliseconds of CPU: do it after the host's
        // first requests (initialize, tools/list) have been answered, not before or beside
        // them. A call that comes sooner builds the client itself. Schemas were
        // meta-validated at load; each compiles on its tool's first call.
        let warm_upstream = upstream.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            let built = tokio::task::spawn_blocking(move || warm_upstream.warm()).await;
            if let Ok(Err(e)) = built {
                tracing::error!("{e}");
            }
        });
        tracing::info!(tools = catalog.len(), "serving MCP on stdio");
        let evm = EvmWallet::open(&config.wallet).context("cannot open the EVM wallet")?;
        match &evm {
            Some(wallet) => tracing::info!(address = %wallet.address(), "EVM wallet ready"),
            None => tracing::info!("no EVM wallet configured; paid tools will not pay"),
        }
        let ledger = tokio::task::block_in_place(|| super::open_ledger(&config))?;
        tracing::info!(ledger = %ledger.location(), "ledger open");
        let lightning = match &config.lightning {
            Some(c) => {
                let lightning = tollgate::lightning::Lightning::open(c)?;
                tracing::info!(backend = lightning.backend.name(), network = %lightning.network, "Lightning backend ready");
                Some(lightning)
            }
            None => None,
        };
        let tempo =
            tollgate::wallet::tempo::TempoWallet::open(config.wallet.tempo.as_ref(), evm.as_ref())
                .context("cannot open the Tempo wallet")?;
        if let Some(wallet) = &tempo {
            tracing::info!(?wallet, "Tempo wallet ready (MPP)");
        }
        let rails = Arc::new(Rails::new(Equipment {
            evm,
            tempo,
            lightning,
            rpc: config.rpc.clone(),
        }));
        // Payments whose outcome is unknown (their process died, or their call ended without
        // an answer) stay reserved (they count against every cap) until their rail says
        // whether they happened. Payments in flight in live processes sharing the ledger are
        // theirs.
        tollgate::checkout::lease::Leases::disown_dead_owners(&*ledger)
            .context("cannot read pending payments")?;
        let unknown = ledger
            .unknown(tollgate::money::now_unix())
            .context("cannot read pending payments")?;
        if !unknown.is_empty() {
            tracing::warn!(
                count = unknown.len(),
                "payments have no known outcome (their process died, or their call ended \
                 without an answer); they stay reserved until reconciled (a retry of the same \
                 call re-sends the same proof)"
            );
            let (ledger, rails) = (ledger.clone(), rails.clone());
            let owner = tollgate::checkout::lease::this_process();
            tokio::spawn(async move {
                // After the host's first requests, like the HTTP client's warm-up (a slow node
                // or backend must not delay them).
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                log_reconciled(
                    tollgate::checkout::reconcile::reconcile(&*ledger, &rails, &owner, tollgate::money::now_unix())
                        .await,
                );
            });
        }
        let mut payments = Checkout::new(policy, config.assets.clone(), rails, ledger, upstream);
        payments.root = match RootKey::load(&config.state_dir) {
            Ok(root) => {
                tokio::task::block_in_place(|| {
                    super::agree_on_root_key(&*payments.ledger, &root, &config)
                })?;
                Some(root)
            }
            Err(CredentialError::NoRootKey(_)) => None,
            Err(e) => return Err(e.into()),
        };
        payments.env_token = std::env::var("TOLLGATE_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        payments
            .use_default_profile()
            .map_err(|e| anyhow::anyhow!(e))?;
        let secret = match tollgate::approval::Secret::load_or_create(&config.state_dir) {
            Ok(secret) => Some(secret),
            Err(e) => {
                tracing::error!(error = %e, "no approval secret: payments that need a person's approval will be refused");
                None
            }
        };
        payments.approval.elicitation_timeout_secs = config.approval.elicitation_timeout_secs;
        payments.approval.expires_after_secs = config.approval.expires_after_secs;
        if let (Some(secret), false) = (&secret, config.approval.listen == "off") {
            let listener = tollgate::approval::page::bind(&config.approval.listen)
                .await
                .context("cannot serve the approval page ([approval] listen)")?;
            let addr = listener.local_addr().context("the approval page's address")?;
            // stderr only: stdout carries MCP frames.
            eprintln!("tollgate: approval page on http://{addr}/");
            tracing::info!(%addr, "serving the approval page");
            payments.approval.page = Some(addr);
            tokio::spawn(tollgate::approval::page::serve(
                listener,
                payments.ledger.clone(),
                secret.clone(),
            ));
        }
        payments.approval.secret = secret;
        let server = Tollgate::new(catalog, payments);
        let running = server
            .serve(rmcp::transport::stdio_pipes())
            .await
            .context("the MCP session did not start")?;
        running
            .waiting()
            .await
            .context("the MCP session ended with an error")?;
        tracing::info!("stdin closed; exiting");
        Ok(())
    })
}
