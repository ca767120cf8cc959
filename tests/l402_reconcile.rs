//! At start, `serve` asks the Lightning backend about every L402 payment an earlier process
//! left pending (recorded with its payment hash before the invoice was paid): a paid one is
//! committed with a receipt and its token kept; one the backend never saw is released. The
//! backend here is a real LNbits (FakeWallet) and the "crash" is a payment made while no
//! tollgate watched.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use support::l402_peer::{L402Peers, start};
use tollgate::ledger::{Cap, Lease, Ledger, NewReservation, ReservationId};
use tollgate::lightning::Lightning;
use tollgate::lightning::Network;
use tollgate::lightning::lnbits::Lnbits;
use tollgate::pay::Proof;

const ORIGIN: &str = "http://127.0.0.1:9";

/// The owner of the payments made "before the crash": alive until its lease lapses.
const OWNER: &str = "a-process-that-will-die";
/// How long its lease runs from the payment.
const LEASE: u64 = 60;

/// Reserves 0.025 USD under a 1 USD cap and records it pending with `hash`, as
/// `server::l402` does before paying.
fn pending_l402(ledger: &Ledger, hash: &str, service: &str) -> ReservationId {
    let id = ledger
        .reserve(
            NewReservation {
                call_id: "c".into(),
                fingerprint: format!("f-{hash}"),
                amount_usd_micros: 25_000,
                caps: vec![Cap::lifetime("policy:total", 1_000_000)],
                tool: service.into(),
                payee: "02ab".into(),
                protocol: "L402".into(),
                meta_json: json!({"network": "lightning:bitcoin", "asset": "BTC",
                                  "amount_atomic": "21000", "rate_usd_micros_per_unit": 1000})
                .to_string(),
                lease: Some(Lease {
                    owner: OWNER.into(),
                    until: tollgate::money::now_unix() + LEASE,
                }),
                unless_call_open: false,
            },
            tollgate::money::now_unix(),
        )
        .unwrap();
    let mut details = Map::new();
    for (k, v) in [
        ("payment_hash", hash),
        ("backend", "lnbits"),
        ("amount_msat", "21000"),
        ("origin", ORIGIN),
        ("service", service),
        ("scheme", "L402"),
        ("macaroon", "AgEEbHNhdA"),
    ] {
        details.insert(k.into(), Value::from(v));
    }
    let proof = Proof {
        payer: "lightning:lnbits".into(),
        valid_before: tollgate::money::now_unix() + 3600,
        details,
        ..Proof::default()
    };
    ledger
        .mark_pending(id, &proof.to_json(), proof.valid_before)
        .unwrap();
    id
}

fn total(ledger: &Ledger) -> (u64, u64) {
    let s = &ledger
        .status(
            &[Cap::lifetime("policy:total", 1_000_000)],
            tollgate::money::now_unix(),
        )
        .unwrap()[0];
    (s.spent_usd_micros, s.reserved_usd_micros)
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_lightning_payments_are_settled_or_released_at_start() {
    if support::mcp::python().is_none() {
        return;
    }
    let Some(peers): Option<L402Peers> = start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();

    // Paid while no tollgate watched (the process died after the backend paid).
    let (paid_invoice, paid_hash) = peers.payee_invoice(21).await;
    let paid_id = pending_l402(&*ledger, &paid_hash, "weather");
    peers.pay_from_payer(&paid_invoice).await;
    // Never paid (the process died before the backend was asked).
    let (_, unpaid_hash) = peers.payee_invoice(21).await;
    pending_l402(&*ledger, &unpaid_hash, "forecast");
    assert_eq!(total(&*ledger), (0, 50_000));

    let _ = rustls::crypto::ring::default_provider().install_default();
    let lightning = Lightning {
        backend: Arc::new(Lnbits::new(&peers.lnbits_url(), &peers.payer_admin_key()).unwrap()),
        network: Network::Bitcoin,
        max_fee_msat: 4_000,
        timeout: Duration::from_secs(10),
    };
    let rails = tollgate::rails::Rails::new(tollgate::rails::Equipment {
        lightning: Some(lightning),
        ..Default::default()
    });
    // While their owner's lease runs they belong to a live call: not touched.
    let now = tollgate::money::now_unix();
    let report = tollgate::checkout::reconcile::reconcile(&*ledger, &rails, "restart", now)
        .await
        .unwrap();
    assert_eq!(report.live, 2, "{report:?}");
    assert_eq!((report.settled, report.released), (0, 0), "{report:?}");
    assert_eq!(total(&*ledger), (0, 50_000));

    // As at a start after the owner's lease lapsed: asked, and settled.
    let later = now + LEASE + 1;
    let report = tollgate::checkout::reconcile::reconcile(&*ledger, &rails, "restart", later)
        .await
        .unwrap();
    assert_eq!((report.settled, report.released), (1, 1), "{report:?}");
    assert!(report.unchecked.is_empty(), "{report:?}");

    // The paid one is committed at its actual cost (21 sats, no fee: 0.021 USD), the unpaid
    // one released: nothing is reserved any more.
    assert_eq!(total(&*ledger), (21_000, 0), "{report:?}");
    assert!(ledger.pending().unwrap().is_empty());
    let receipts = ledger.all_receipts(None, 10).unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].reservation_id, paid_id);
    let receipt: Value = serde_json::from_str(&receipts[0].json).unwrap();
    assert_eq!(receipt["payment_hash"], paid_hash.as_str());
    assert_eq!(receipt["amount_usd_micros"], 21_000);
    assert_eq!(receipt["reconciled"], true);
    assert!(receipt.get("macaroon").is_none(), "{receipt}");
    assert!(receipt.get("preimage").is_none(), "{receipt}");

    // Its token is kept for the next call, with the preimage LNbits paid for.
    let token = ledger
        .token(ORIGIN, "weather", tollgate::money::now_unix())
        .unwrap()
        .expect("token kept");
    assert_eq!(
        hex::encode(Sha256::digest(hex::decode(&token.preimage).unwrap())),
        paid_hash
    );
    assert!(
        ledger
            .token(ORIGIN, "forecast", tollgate::money::now_unix())
            .unwrap()
            .is_none()
    );
}
