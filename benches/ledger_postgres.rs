//! The shared ledger beside the embedded one (`cargo bench --bench ledger_postgres`): the
//! latency of one payment's ledger work, reserve + commit, and of the x402 path's
//! reserve_proved + commit, median and p99, on a local PostgreSQL (fsync on, as a real
//! database) and on SQLite (`synchronous = FULL`), then payments per second with 8 threads
//! reserving against the same caps. Figures, not assertions.
//!
//! The database: `TOLLGATE_BENCH_PG_URL` if set (a database the bench may fill), else a
//! cluster of its own in `target/pg-bench` (`scripts/postgres`, durable), stopped after.

#[path = "support/bench_postgres.rs"]
mod bench_postgres;

use bench_postgres::BenchPostgres;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tollgate::ledger::{
    Cap, Ledger, LedgerConfig, NewReceipt, NewReservation, Proved, ReservationId,
};

const ROUNDS: u64 = 2_000;
const THREADS: u64 = 8;
const PER_THREAD: u64 = 250;
const NOW: u64 = 1_800_000_000;

fn caps(budget: u64) -> Vec<Cap> {
    vec![
        Cap::lifetime("policy:total", u64::MAX / 4),
        Cap::rolling("policy:per_day", u64::MAX / 4, 86_400),
        Cap::lifetime(format!("budget:{budget:064x}"), u64::MAX / 4),
    ]
}

fn reservation(tag: &str, i: u64, budget: u64) -> NewReservation {
    NewReservation {
        call_id: format!("{tag}-{i}"),
        fingerprint: format!("fp-{tag}-{i}"),
        amount_usd_micros: 5_000,
        caps: caps(budget),
        tool: "search".into(),
        payee: "0x2096".into(),
        protocol: "x402".into(),
        meta_json: "{}".into(),
        lease: None,
        unless_call_open: false,
    }
}

fn receipt(tag: &str, i: u64) -> NewReceipt {
    NewReceipt {
        receipt_id: format!("{tag}-{i}"),
        at: NOW,
        json: r#"{"tx":"bench"}"#.into(),
    }
}

fn percentile(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// One payment's ledger work, `ROUNDS` times, one caller: (reserve + commit,
/// reserve_proved + commit) latencies.
fn latencies(ledger: &Ledger, tag: &str) -> (Vec<Duration>, Vec<Duration>) {
    let (mut plain, mut proved) = (Vec::new(), Vec::new());
    for i in 0..ROUNDS {
        let t = Instant::now();
        let id = ledger
            .reserve(reservation(tag, i, i % 100), NOW)
            .expect("reserve");
        ledger
            .commit(id, 4_000, receipt(tag, i), NOW)
            .expect("commit");
        plain.push(t.elapsed());

        let tag = format!("{tag}-proved");
        let t = Instant::now();
        let id = ledger
            .reserve_proved(
                reservation(&tag, i, i % 100),
                NOW,
                &mut |id: ReservationId| {
                    Ok(Proved {
                        proof_json: format!(r#"{{"sig":"{}"}}"#, id.0),
                        valid_before: NOW + 60,
                    })
                },
            )
            .expect("reserve_proved");
        ledger
            .commit(id, 4_000, receipt(&tag, i), NOW)
            .expect("commit");
        proved.push(t.elapsed());
    }
    (plain, proved)
}

/// Payments per second: `THREADS` callers, each with its own ledger handle (as separate
/// processes would have), all reserving against the same policy caps; and how many calls
/// failed (SQLite gives up after its 5 s busy timeout when fsyncs are slow).
fn throughput(open: &(dyn Fn() -> Arc<Ledger> + Sync), tag: &str) -> (f64, u64) {
    let barrier = Arc::new(Barrier::new(THREADS as usize));
    let (started, failed) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let barrier = barrier.clone();
                s.spawn(move || {
                    let ledger = open();
                    barrier.wait();
                    let started = Instant::now();
                    let mut failed = 0;
                    for i in 0..PER_THREAD {
                        let tag = format!("{tag}-t{t}");
                        let paid = ledger
                            .reserve(reservation(&tag, i, t), NOW)
                            .and_then(|id| ledger.commit(id, 4_000, receipt(&tag, i), NOW));
                        if paid.is_err() {
                            failed += 1;
                        }
                    }
                    (started, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((Instant::now(), 0), |(s, f), (s2, f2)| (s.min(s2), f + f2))
    });
    let done = THREADS * PER_THREAD - failed;
    (done as f64 / started.elapsed().as_secs_f64(), failed)
}

fn report(
    backend: &str,
    plain: &mut [Duration],
    proved: &mut [Duration],
    (per_sec, failed): (f64, u64),
) {
    println!(
        "{backend:<10}  reserve+commit median {} p99 {}   reserve_proved+commit median {} p99 {}   \
         {THREADS} threads: {per_sec:.0} payments/s ({failed} failed)",
        ms(percentile(plain, 50)),
        ms(percentile(plain, 99)),
        ms(percentile(proved, 50)),
        ms(percentile(proved, 99)),
    );
}

fn main() {
    // Stopped (when it is the bench's own) as this is dropped, at the end of main.
    let cluster = BenchPostgres::start();
    let url = cluster.url.clone();
    println!(
        "ledger work per payment, {ROUNDS} rounds, one caller; then {THREADS} threads x \
         {PER_THREAD} payments against the same caps"
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let sqlite = Ledger::open(dir.path()).expect("open SQLite");
    let (mut plain, mut proved) = latencies(&*sqlite, "s");
    let per_sec = throughput(&|| Ledger::open(dir.path()).expect("open"), "st");
    report("SQLite", &mut plain, &mut proved, per_sec);

    let config = LedgerConfig {
        url: Some(url),
        pool_size: 4,
    };
    let postgres = Ledger::open_with(dir.path(), &config).expect("open PostgreSQL");
    // A database kept between runs: the ids differ per run.
    let run = format!("{:x}", std::process::id());
    let (mut plain, mut proved) = latencies(&*postgres, &format!("p{run}"));
    let per_sec = throughput(
        &|| Ledger::open_with(dir.path(), &config).expect("open"),
        &format!("pt{run}"),
    );
    report("PostgreSQL", &mut plain, &mut proved, per_sec);
    drop(postgres);
}
