//! Ledger benchmarks (`cargo bench --bench ledger`): the cost of a budget check must not grow
//! with history. Fills one ledger with 1,000,000 receipts and another with 10, then reports
//! the median (and p99) latency of reserve+commit (target ≤ 1 ms, fsync included), of
//! `status`, and of verifying a credential (target ≤ 5 µs): the signature chain and caveats
//! alone, and with the revocation lookup the server does on every call. Figures, not
//! assertions.
//!
//! The history is written straight into the schema in one transaction (a million
//! reserve+commit calls would take a million fsyncs); keep `bulk_fill` in step with
//! `src/ledger/schema.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};
use tollgate::budget::credential::{Credential, RootKey};
use tollgate::ledger::{Cap, FILE_NAME, Ledger, NewReceipt, NewReservation};

const ROUNDS: usize = 2_000;
const BUDGET_KEYS: u64 = 1_000;
/// One receipt every 30 s: a million span about 347 days, ~2,900 in any one day.
const SPACING_SECS: u64 = 30;
const NOW: u64 = 1_800_000_000;

fn caps(budget: u64) -> Vec<Cap> {
    vec![
        Cap::lifetime("policy:total", u64::MAX / 4),
        Cap::rolling("policy:per-day", u64::MAX / 4, 86_400),
        Cap::lifetime(format!("budget:{budget:064x}"), u64::MAX / 4),
    ]
}

/// Writes `count` committed payments ending at `NOW`, spread over `BUDGET_KEYS` budgets.
fn bulk_fill(path: &Path, count: u64) -> rusqlite::Result<()> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    let tx = conn.transaction()?;
    let mut totals = std::collections::BTreeMap::<String, i64>::new();
    {
        let mut reservation = tx.prepare(
            "INSERT INTO reservations (id, call_id, fingerprint, state, amount_usd_micros,
                 actual_usd_micros, tool, payee, protocol, meta_json, proof_json, valid_before,
                 created_at, settled_at)
             VALUES (?1, ?2, ?3, 'committed', ?4, ?4, 'search', '0x2096', 'x402', '{}',
                 '{}', ?5, ?5, ?5)",
        )?;
        let mut key = tx.prepare("INSERT INTO reservation_keys VALUES (?1, ?2)")?;
        let mut spend = tx.prepare("INSERT INTO spend VALUES (?1, ?2, ?3, ?4)")?;
        let mut receipt = tx.prepare(
            "INSERT INTO receipts (reservation_id, receipt_id, at, committed_at, json)
             VALUES (?1, ?2, ?3, ?3, ?4)",
        )?;
        for i in 0..count {
            let id = i as i64 + 1;
            let at = (NOW - (count - i) * SPACING_SECS) as i64;
            let amount = 1_000 + (i % 97) as i64;
            let call = format!("bulk-{i}");
            reservation.execute(params![id, call, call, amount, at])?;
            receipt.execute(params![id, format!("0x{i:064x}"), at, r#"{"tx":"bulk"}"#])?;
            for k in caps(i % BUDGET_KEYS).into_iter().map(|c| c.key) {
                key.execute(params![id, k])?;
                spend.execute(params![k, at, id, amount])?;
                *totals.entry(k).or_default() += amount;
            }
        }
        let mut total = tx.prepare("INSERT INTO key_totals VALUES (?1, ?2, 0)")?;
        for (k, spent) in &totals {
            total.execute(params![k, spent])?;
        }
        tx.execute(
            "INSERT INTO spend_hours (key, hour, amount_usd_micros)
             SELECT key, at / 3600, SUM(amount_usd_micros) FROM spend GROUP BY key, at / 3600",
            [],
        )?;
    }
    tx.commit()
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn measure(receipts: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = Ledger::open(dir.path()).expect("open");
    let t = Instant::now();
    bulk_fill(&dir.path().join(FILE_NAME), receipts).expect("bulk fill");
    let fill = t.elapsed();

    let mut pay = Vec::with_capacity(ROUNDS);
    let mut pay3 = Vec::with_capacity(ROUNDS);
    let mut status = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS as u64 {
        let reservation = |suffix: &str| NewReservation {
            call_id: format!("bench-{suffix}{i}"),
            fingerprint: format!("fp-{suffix}{i}"),
            amount_usd_micros: 5_000,
            caps: caps(i * 7 % BUDGET_KEYS),
            tool: "search".into(),
            payee: "0x2096".into(),
            protocol: "x402".into(),
            meta_json: "{}".into(),
            lease: None,
            unless_call_open: false,
        };
        let receipt = |suffix: &str| NewReceipt {
            receipt_id: format!("bench-{suffix}{i}"),
            at: NOW,
            json: r#"{"tx":"bench"}"#.into(),
        };
        let t = Instant::now();
        let id = ledger.reserve(reservation(""), NOW).expect("reserve");
        ledger.commit(id, 4_000, receipt(""), NOW).expect("commit");
        pay.push(t.elapsed());

        let t = Instant::now();
        let id = ledger.reserve(reservation("p"), NOW).expect("reserve");
        ledger
            .mark_pending(id, r#"{"sig":"0x00"}"#, NOW + 60)
            .expect("mark pending");
        ledger.commit(id, 4_000, receipt("p"), NOW).expect("commit");
        pay3.push(t.elapsed());

        let t = Instant::now();
        let s = ledger.status(&caps(i % BUDGET_KEYS), NOW).expect("status");
        status.push(t.elapsed());
        std::hint::black_box(s);
    }
    // Credential verification, as a sub-agent's token is checked on every call: a parent
    // with a budget, a child with a label, tools, a per-call cap, an expiry and a budget.
    let root_dir = tempfile::tempdir().expect("temp dir");
    RootKey::create(root_dir.path()).expect("root key");
    let root = RootKey::load(root_dir.path()).expect("root key");
    let mut token = root
        .mint(&["budget_usd_micros <= 10000000".to_owned()])
        .expect("mint");
    for caveat in [
        "label = worker.0badc0de",
        "tools = web_search,translate",
        "max_per_call_usd_micros <= 50000",
        "expires < 4000000000",
        "budget_usd_micros <= 1000000",
    ] {
        token.add_caveat(caveat.as_bytes()).expect("caveat");
    }
    let text = token.to_base64url();
    for i in 0..10_000u64 {
        ledger
            .revoke(&format!("token:{i:064x}"), NOW)
            .expect("revoke");
    }
    let mut verify = Vec::with_capacity(ROUNDS * 5);
    let mut identify = Vec::with_capacity(ROUNDS * 5);
    for _ in 0..ROUNDS * 5 {
        let t = Instant::now();
        let credential = Credential::verify(&text, &root, NOW).expect("verify");
        verify.push(t.elapsed());
        std::hint::black_box(&credential);
        let t = Instant::now();
        let credential = Credential::verify(&text, &root, NOW).expect("verify");
        let revoked = ledger.is_revoked(&credential.lineage).expect("revocations");
        identify.push(t.elapsed());
        assert!(!revoked);
    }
    println!(
        "{receipts:>9} receipts: verify a 6-caveat credential median {:?} p99 {:?}; \
         verify + revocation lookup (10,000 revocations) median {:?} p99 {:?}",
        percentile(&mut verify, 50),
        percentile(&mut verify, 99),
        percentile(&mut identify, 50),
        percentile(&mut identify, 99),
    );
    println!(
        "{receipts:>9} receipts (filled in {:.1?}): reserve+commit median {:?} p99 {:?}; \
         reserve+mark_pending+commit median {:?}; status(3 caps) median {:?} p99 {:?}",
        fill,
        percentile(&mut pay, 50),
        percentile(&mut pay, 99),
        percentile(&mut pay3, 50),
        percentile(&mut status, 50),
        percentile(&mut status, 99),
    );
}

/// What one durable append costs on this disk: the floor under every ledger commit.
fn fsync_floor() -> Duration {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut file = std::fs::File::create(dir.path().join("probe")).expect("probe file");
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            file.write_all(&[0u8; 4096]).expect("write");
            file.sync_data().expect("fsync");
            t.elapsed()
        })
        .collect();
    percentile(&mut times, 50)
}

fn main() {
    println!(
        "one 4 KiB write+fdatasync here: median {:?} (reserve+commit is two of them)",
        fsync_floor()
    );
    measure(10);
    measure(1_000_000);
}
