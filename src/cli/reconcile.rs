//! `tollgate reconcile`: settle payments whose outcome is unknown.

use std::path::PathBuf;

use anyhow::Context as _;

use tollgate::config::Config;
use tollgate::ledger::Ledger;

pub fn log_reconciled(
    outcome: Result<tollgate::checkout::reconcile::Report, tollgate::ledger::LedgerError>,
) -> Option<tollgate::checkout::reconcile::Report> {
    match outcome {
        Ok(report) => {
            tracing::info!(
                settled = report.settled,
                released = report.released,
                pending = report.pending,
                unsent = report.unsent,
                live = report.live,
                unchecked = report.unchecked.len(),
                "reconciled payments from earlier runs"
            );
            for why in &report.unchecked {
                tracing::warn!("a payment stays reserved: {why}");
            }
            Some(report)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not reconcile payments from earlier runs");
            None
        }
    }
}

pub fn reconcile(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ledger = Ledger::open(&config.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Unknown outcomes are asked of each rail's chain (`[rpc]`) or Lightning backend; no
    // wallet is needed to ask.
    let lightning = match &config.lightning {
        Some(c) => match tollgate::lightning::Lightning::open(c) {
            Ok(lightning) => Some(lightning),
            Err(e) => {
                println!("Lightning payments not checked: {e}");
                None
            }
        },
        None => None,
    };
    let rails = tollgate::rails::Rails::new(tollgate::rails::Equipment {
        lightning,
        rpc: config.rpc.clone(),
        ..Default::default()
    });
    // This command owns what it claims while it asks; a live process's payments are left alone.
    let owner = tollgate::checkout::lease::this_process();
    let report = runtime
        .block_on(tollgate::checkout::reconcile::reconcile(
            &*ledger,
            &rails,
            &owner,
            tollgate::money::now_unix(),
        ))
        .context("reconciling")?;
    println!(
        "{} settled (receipt written), {} released (provably unpaid; {} of them reserved but \
         never sent), {} still pending (valid and unused: a retry re-sends it), {} in flight in \
         a live call (not touched), {} not checkable",
        report.settled,
        report.released,
        report.unsent,
        report.pending,
        report.live,
        report.unchecked.len()
    );
    for why in &report.unchecked {
        println!("  not checkable: {why}");
    }
    Ok(())
}
