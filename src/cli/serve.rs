//! `tollgate serve`: the MCP server over stdio, or over streamable HTTP with `--http`.

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

/// Serves MCP: on stdio, or over HTTP when `http` is given (`Some(None)`: on `[http] listen`;
/// `Some(Some(addr))`: on `addr`).
pub fn serve(config: Option<PathBuf>, http: Option<Option<String>>) -> anyhow::Result<()> {
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
        if http.is_none() {
            tracing::info!(tools = catalog.len(), "serving MCP on stdio");
        }
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
        // A network caller is who its request says: the process's own token and the default
        // profile are for stdio only.
        if http.is_none() {
            payments.env_token = std::env::var("TOLLGATE_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty());
            payments
                .use_default_profile()
                .map_err(|e| anyhow::anyhow!(e))?;
        }
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
        if let Some(listen) = http {
            return serve_http(&config, catalog, payments, listen).await;
        }
        let server = Tollgate::new(catalog, payments);
        let finishing = server.clone();
        let running = server
            .serve(rmcp::transport::stdio_pipes())
            .await
            .context("the MCP session did not start")?;
        let ended = running.waiting().await;
        // The receipts of the last answers are written before the process exits.
        finishing.finish_writes().await;
        ended.context("the MCP session ended with an error")?;
        tracing::info!("stdin closed; exiting");
        Ok(())
    })
}

/// Serves MCP over streamable HTTP until SIGTERM or SIGINT, then shuts down gracefully.
async fn serve_http(
    config: &tollgate::config::Config,
    catalog: Arc<tollgate::catalog::Catalog>,
    payments: Checkout,
    listen: Option<String>,
) -> anyhow::Result<()> {
    let http = &config.http;
    let listen = listen.unwrap_or_else(|| http.listen.clone());
    if let Some(why) = http.refuse_listen(&listen) {
        anyhow::bail!("cannot serve MCP over HTTP on {listen}: {why}");
    }
    let anonymous_token = match &http.anonymous_profile {
        None => None,
        Some(name) => Some(anonymous_credential(&payments, name)?),
    };
    let settings = tollgate::server::http::Settings {
        allowed_hosts: http.allowed_hosts.clone(),
        allowed_origins: http.allowed_origins.clone(),
        max_body_bytes: http.max_body_bytes,
        max_sessions: http.max_sessions,
        max_connections: http.max_connections,
        session_idle: std::time::Duration::from_secs(http.session_idle_secs),
        anonymous_token,
        shutdown_grace: std::time::Duration::from_secs(http.shutdown_grace_secs),
        tls: match (&http.tls_cert, &http.tls_key) {
            (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
            _ => None,
        },
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen} ([http] listen or --http)"))?;
    let addr = listener
        .local_addr()
        .context("the HTTP listener's address")?;
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    eprintln!("tollgate: MCP over HTTP on {scheme}://{addr}/mcp");
    tracing::info!(%addr, tools = catalog.len(), "serving MCP over streamable HTTP");
    let server = Tollgate::new(catalog, payments);
    tollgate::server::http::serve(server, listener, settings, shutdown_signal())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("shut down");
    Ok(())
}

/// TLS for the listener from `[http] tls_cert` (a PEM chain) and `tls_key` (its PEM key).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read [http] tls_cert {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "[http] tls_cert {} holds no certificate",
        cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read [http] tls_key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("[http] tls_cert and tls_key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The credential of `[http] anonymous_profile`, which requests without a bearer are served as.
fn anonymous_credential(payments: &Checkout, name: &str) -> anyhow::Result<String> {
    let profile = payments.policy.profile(name).ok_or_else(|| {
        anyhow::anyhow!(
            "[http] anonymous_profile names {name:?}, but the policy ({}) has no such profile",
            payments.policy.source
        )
    })?;
    let root = payments.root.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "[http] anonymous_profile needs the root key to make its credential: run `tollgate init`"
        )
    })?;
    let token = root
        .profile_credential(name, &profile.caveats)
        .map_err(|e| anyhow::anyhow!("[http] anonymous_profile {name:?}: {e}"))?;
    Ok(token.to_base64url())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}
