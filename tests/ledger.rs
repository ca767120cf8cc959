//! The ledger as a specification: budgets hold under concurrency (threads with their own
//! connections, and real OS processes), windows roll, reservations count until settled, a
//! kill -9 loses nothing, and old files migrate.
//!
//! Every behaviour is stated once, as a function of the backend, and runs against both:
//! `sqlite::<name>` and `postgres::<name>` (a fresh database on the PostgreSQL that
//! `scripts/test` starts; see `support/ledgers.rs`). What only one backend has (SQLite's file,
//! PostgreSQL's URL) is tested on its own below.
//!
//! Tests that need other processes re-run this test binary with `LEDGER_TEST_CHILD` set,
//! selecting [`child_process`] (which does nothing in a normal run).

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Barrier};

use support::ledgers::{Backend, Place};
use tollgate::ledger::{
    Cap, Lease, Ledger, LedgerError, NewReceipt, NewReservation, PaymentStage, ReservationId,
    ReservationState,
};

for_each_backend!(
    exactly_n_payments_fit_under_a_cap_with_eight_connections,
    exactly_n_reservations_fit_when_none_commit,
    exactly_n_payments_fit_under_a_cap_across_os_processes,
    a_reservation_killed_before_commit_stays_pending_and_counted,
    a_committed_receipt_survives_kill_9,
    spend_outside_the_rolling_window_no_longer_counts,
    rolling_spend_equals_the_sum_of_entries_inside_the_window,
    open_reservations_count_against_a_rolling_cap_whatever_their_age,
    release_frees_the_amount,
    a_released_payment_that_was_paid_after_all_is_committed_not_lost,
    a_pending_payment_stays_counted_and_only_an_unknown_proof_is_claimed_once,
    commit_with_a_lower_actual_amount_counts_the_actual,
    committing_twice_records_spend_once,
    a_payment_must_fit_every_cap_and_exceeded_names_the_cap,
    receipts_are_listed_per_key_newest_first_including_descendants,
    revocations_are_durable_and_checked_across_a_chain,
    amounts_beyond_64_bit_integers_are_refused_not_wrapped,
    eight_connections_racing_to_claim_one_unknown_payment_claim_it_once,
    a_reservation_and_its_proof_are_written_together_or_not_at_all,
    a_new_call_is_not_reserved_while_a_payment_of_the_same_call_is_open,
);

const CHILD_MODE: &str = "LEDGER_TEST_CHILD";
const CHILD_DIR: &str = "LEDGER_TEST_DIR";
const CHILD_URL: &str = "LEDGER_TEST_URL";
const CHILD_TAG: &str = "LEDGER_TEST_TAG";
const CHILD_ATTEMPTS: &str = "LEDGER_TEST_ATTEMPTS";
const T0: u64 = 1_800_000_000;

fn reservation(call: &str, amount: u64, caps: Vec<Cap>) -> NewReservation {
    NewReservation {
        call_id: call.to_owned(),
        fingerprint: format!("fp-{call}"),
        amount_usd_micros: amount,
        caps,
        tool: "search".to_owned(),
        payee: "0x209693Bc6afc0C5328bA36FaF03C514EF312287C".to_owned(),
        protocol: "x402".to_owned(),
        meta_json: r#"{"network":"eip155:8453"}"#.to_owned(),
        lease: None,
        unless_call_open: false,
    }
}

fn lease(owner: &str, until: u64) -> Lease {
    Lease {
        owner: owner.to_owned(),
        until,
    }
}

fn receipt(id: &str, at: u64) -> NewReceipt {
    NewReceipt {
        receipt_id: id.to_owned(),
        at,
        json: format!(r#"{{"tx":"{id}"}}"#),
    }
}

/// The N-payment cap shared by the concurrency tests.
fn total_cap(n: u64, amount: u64) -> Cap {
    Cap::lifetime("policy:total", n * amount)
}

fn exceeded(result: &Result<ReservationId, LedgerError>) -> bool {
    matches!(result, Err(LedgerError::Exceeded { .. }))
}

/// Reserves and commits `attempts` payments of `amount`, returning how many succeeded.
/// Anything but success or `Exceeded` fails the test.
fn pay_loop(ledger: &Ledger, tag: &str, attempts: usize, cap: &Cap, amount: u64) -> u64 {
    let mut paid = 0;
    for i in 0..attempts {
        let call = format!("{tag}-{i}");
        let result = ledger.reserve(reservation(&call, amount, vec![cap.clone()]), T0);
        if exceeded(&result) {
            continue;
        }
        let id = result.expect("reserve failed other than Exceeded");
        ledger
            .commit(id, amount, receipt(&call, T0), T0)
            .expect("commit");
        paid += 1;
    }
    paid
}

fn exactly_n_payments_fit_under_a_cap_with_eight_connections(backend: Backend) {
    const N: u64 = 50;
    const AMOUNT: u64 = 10_000;
    let Some(place) = Place::new(backend) else {
        return;
    };
    drop(place.open());
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (state, config) = (place.state().to_owned(), place.config());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Each thread its own connection, as separate processes would have.
                let ledger = Ledger::open_with(&state, &config).unwrap();
                barrier.wait();
                pay_loop(
                    &*ledger,
                    &format!("t{t}"),
                    32,
                    &total_cap(N, AMOUNT),
                    AMOUNT,
                )
            })
        })
        .collect();
    let paid: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(paid, N);

    let ledger = place.open();
    let status = ledger.status(&[total_cap(N, AMOUNT)], T0).unwrap();
    assert_eq!(status[0].spent_usd_micros, N * AMOUNT);
    assert_eq!(status[0].reserved_usd_micros, 0);
    assert_eq!(status[0].remaining_usd_micros, 0);
    let receipts = ledger.all_receipts(None, 1000).unwrap();
    assert_eq!(receipts.len() as u64, N);
    assert_eq!(
        receipts.iter().map(|r| r.amount_usd_micros).sum::<u64>(),
        N * AMOUNT
    );
}

fn exactly_n_reservations_fit_when_none_commit(backend: Backend) {
    // Open reservations alone must hold the line: nothing is committed here. And eight
    // connections create and migrate the fresh file at once.
    const N: u64 = 20;
    let Some(place) = Place::new(backend) else {
        return;
    };
    let barrier = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (state, config) = (place.state().to_owned(), place.config());
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let ledger = Ledger::open_with(&state, &config).unwrap();
                (0..32)
                    .filter(|i| {
                        let r = reservation(&format!("t{t}-{i}"), 7, vec![total_cap(N, 7)]);
                        let result = ledger.reserve(r, T0);
                        assert!(result.is_ok() || exceeded(&result), "{result:?}");
                        result.is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let reserved: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(reserved as u64, N);
    let ledger = place.open();
    assert_eq!(ledger.pending().unwrap().len() as u64, N);
    let status = ledger.status(&[total_cap(N, 7)], T0).unwrap();
    assert_eq!(
        (status[0].spent_usd_micros, status[0].reserved_usd_micros),
        (0, N * 7)
    );
}

/// A child process of this test binary, killed by [`Drop`] if the test fails first.
struct ChildProcess(Child);

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(mode: &str, place: &Place, tag: &str, attempts: usize) -> ChildProcess {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    if let Some(url) = &place.url {
        command.env(CHILD_URL, url);
    }
    let child = command
        .args([
            "--exact",
            "child_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, place.state())
        .env(CHILD_TAG, tag)
        .env(CHILD_ATTEMPTS, attempts.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    ChildProcess(child)
}

/// Reads the child's stdout up to its `LEDGER <word> <value>` line, returning the value.
fn wait_for(stdout: &mut BufReader<ChildStdout>, word: &str) -> String {
    let prefix = format!("LEDGER {word} ");
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdout.read_line(&mut line).unwrap();
        assert!(n > 0, "the child exited before saying {word:?}");
        // libtest may have written "test child_process ... " on the same line.
        if let Some(at) = line.find(&prefix) {
            return line[at + prefix.len()..].trim_end().to_owned();
        }
    }
}

/// Not a test of its own: the body of the child processes the other tests spawn.
#[test]
fn child_process() {
    let Ok(mode) = std::env::var(CHILD_MODE) else {
        return;
    };
    let dir = std::env::var(CHILD_DIR).unwrap();
    let tag = std::env::var(CHILD_TAG).unwrap();
    let attempts: usize = std::env::var(CHILD_ATTEMPTS).unwrap().parse().unwrap();
    let ledger = support::ledgers::open_in_child(Path::new(&dir), std::env::var(CHILD_URL).ok());
    let hang = || std::thread::sleep(std::time::Duration::from_secs(60));
    match mode.as_str() {
        "pay-loop" => {
            let paid = pay_loop(&*ledger, &tag, attempts, &total_cap(60, 1_000), 1_000);
            println!("LEDGER paid {paid}");
        }
        "reserve-then-hang" => {
            let id = ledger
                .reserve(reservation(&tag, 40_000, vec![total_cap(1, 100_000)]), T0)
                .unwrap();
            ledger
                .mark_pending(id, r#"{"sig":"0xabc"}"#, T0 + 60)
                .unwrap();
            println!("LEDGER reserved {}", id.0);
            hang();
        }
        "commit-then-hang" => {
            let id = ledger
                .reserve(reservation(&tag, 40_000, vec![total_cap(1, 100_000)]), T0)
                .unwrap();
            ledger.commit(id, 30_000, receipt(&tag, T0), T0).unwrap();
            println!("LEDGER committed {}", id.0);
            hang();
        }
        other => panic!("unknown child mode {other:?}"),
    }
}

fn exactly_n_payments_fit_under_a_cap_across_os_processes(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    drop(place.open());
    let mut children: Vec<ChildProcess> = (0..4)
        .map(|p| spawn_child("pay-loop", &place, &format!("p{p}"), 40))
        .collect();
    let mut paid = 0u64;
    for child in &mut children {
        let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
        paid += wait_for(&mut stdout, "paid").parse::<u64>().unwrap();
        assert!(child.0.wait().unwrap().success());
    }
    assert_eq!(paid, 60, "4 processes x 40 attempts under a 60-payment cap");

    let ledger = place.open();
    let status = ledger.status(&[total_cap(60, 1_000)], T0).unwrap();
    assert_eq!(status[0].spent_usd_micros, 60_000);
    assert_eq!(ledger.all_receipts(None, 1000).unwrap().len(), 60);
    assert!(ledger.pending().unwrap().is_empty());
}

fn a_reservation_killed_before_commit_stays_pending_and_counted(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let mut child = spawn_child("reserve-then-hang", &place, "killed", 0);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let id: i64 = wait_for(&mut stdout, "reserved").parse().unwrap();
    child.0.kill().unwrap(); // SIGKILL
    child.0.wait().unwrap();

    let ledger = place.open();
    let pending = ledger.pending().unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, ReservationId(id));
    assert_eq!(pending[0].state, ReservationState::Pending);
    assert_eq!(pending[0].proof_json.as_deref(), Some(r#"{"sig":"0xabc"}"#));
    assert_eq!(pending[0].valid_before, Some(T0 + 60));
    assert_eq!(pending[0].fingerprint, "fp-killed");
    assert_eq!(pending[0].age_secs(T0 + 5), 5);
    let status = ledger.status(&[total_cap(1, 100_000)], T0).unwrap();
    assert_eq!(status[0].reserved_usd_micros, 40_000);
    assert_eq!(status[0].remaining_usd_micros, 60_000);
    // Still counted: a payment that would fit only without it is refused.
    let r = ledger.reserve(reservation("next", 70_000, vec![total_cap(1, 100_000)]), T0);
    assert!(exceeded(&r), "{r:?}");
}

fn a_committed_receipt_survives_kill_9(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let mut child = spawn_child("commit-then-hang", &place, "survivor", 0);
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let id: i64 = wait_for(&mut stdout, "committed").parse().unwrap();
    child.0.kill().unwrap();
    child.0.wait().unwrap();

    let ledger = place.open();
    let receipts = ledger.all_receipts(None, 10).unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].reservation_id, ReservationId(id));
    assert_eq!(receipts[0].receipt_id, "survivor");
    assert_eq!(receipts[0].amount_usd_micros, 30_000);
    assert!(ledger.pending().unwrap().is_empty());
    let status = ledger.status(&[total_cap(1, 100_000)], T0).unwrap();
    assert_eq!(
        (status[0].spent_usd_micros, status[0].reserved_usd_micros),
        (30_000, 0)
    );
}

fn spend_outside_the_rolling_window_no_longer_counts(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let day = Cap::rolling("policy:per-day", 3_000, 86_400);
    let id = ledger
        .reserve(reservation("a", 2_000, vec![day.clone()]), T0)
        .unwrap();
    ledger.commit(id, 2_000, receipt("a", T0), T0).unwrap();

    let later = T0 + 86_399;
    let r = ledger.reserve(reservation("b", 2_000, vec![day.clone()]), later);
    assert!(exceeded(&r), "still inside the window: {r:?}");
    let status = ledger.status(std::slice::from_ref(&day), later).unwrap();
    assert_eq!(status[0].spent_usd_micros, 2_000);

    // Exactly one window later the old spend has left it.
    let next_day = T0 + 86_400;
    assert_eq!(
        ledger.status(std::slice::from_ref(&day), next_day).unwrap()[0].spent_usd_micros,
        0
    );
    let id = ledger
        .reserve(reservation("b", 2_000, vec![day.clone()]), next_day)
        .unwrap();
    ledger
        .commit(id, 2_000, receipt("b", next_day), next_day)
        .unwrap();
    // The same key read as a lifetime total still sees both.
    let lifetime = Cap::lifetime("policy:per-day", 10_000);
    assert_eq!(
        ledger.status(&[lifetime], next_day).unwrap()[0].spent_usd_micros,
        4_000
    );
}

fn rolling_spend_equals_the_sum_of_entries_inside_the_window(backend: Backend) {
    // Rolling windows are read from hourly totals plus the entries of the first, partial
    // hour; compare with the plain sum over entries at many edges, hour boundaries included.
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (seed >> 33) % n
    };
    let base = T0 - T0 % 3_600; // an hour boundary
    let mut entries = Vec::new();
    for i in 0..300 {
        let at = match i % 3 {
            0 => base + next(3 * 86_400),
            1 => base + 3_600 * next(72),     // exactly on an hour
            _ => base + 3_600 * next(72) - 1, // just before one
        };
        let amount = 1 + next(1_000);
        let id = ledger
            .reserve(
                reservation(
                    &format!("w{i}"),
                    amount,
                    vec![Cap::lifetime("k", u64::MAX / 2)],
                ),
                at,
            )
            .unwrap();
        ledger
            .commit(id, amount, receipt(&format!("w{i}"), at), at)
            .unwrap();
        entries.push((at, amount));
    }
    for round in 0..600 {
        let window = match next(4) {
            0 => 1 + next(7_200),
            1 => 3_600 * (1 + next(48)),
            2 => 86_400,
            _ => 1 + next(5 * 86_400),
        };
        let now = match round % 3 {
            // An entry exactly at the window's open edge (excluded), or just inside it.
            0 => entries[next(entries.len() as u64) as usize].0 + window,
            1 => entries[next(entries.len() as u64) as usize].0 + window - 1,
            _ => base + next(4 * 86_400),
        };
        let expected: u64 = entries
            .iter()
            .filter(|(at, _)| now < window || *at > now - window)
            .map(|(_, amount)| amount)
            .sum();
        let status = ledger
            .status(&[Cap::rolling("k", u64::MAX, window)], now)
            .unwrap();
        assert_eq!(
            status[0].spent_usd_micros, expected,
            "now {now}, window {window}"
        );
    }
}

fn open_reservations_count_against_a_rolling_cap_whatever_their_age(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let hour = Cap::rolling("policy:per-hour", 1_000, 3_600);
    ledger
        .reserve(reservation("old", 800, vec![hour.clone()]), T0)
        .unwrap();
    let r = ledger.reserve(reservation("new", 800, vec![hour.clone()]), T0 + 10 * 3_600);
    assert!(exceeded(&r), "{r:?}");
}

fn release_frees_the_amount(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = Cap::lifetime("policy:total", 1_000);
    let id = ledger
        .reserve(reservation("a", 1_000, vec![cap.clone()]), T0)
        .unwrap();
    assert!(exceeded(
        &ledger.reserve(reservation("b", 1, vec![cap.clone()]), T0)
    ));
    ledger.release(id, T0).unwrap();
    ledger.release(id, T0).unwrap(); // releasing twice is a no-op
    let status = ledger.status(std::slice::from_ref(&cap), T0).unwrap();
    assert_eq!(
        (status[0].spent_usd_micros, status[0].reserved_usd_micros),
        (0, 0)
    );
    assert!(ledger.pending().unwrap().is_empty());
    ledger
        .reserve(reservation("b", 1_000, vec![cap]), T0)
        .unwrap();
}

fn a_released_payment_that_was_paid_after_all_is_committed_not_lost(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = Cap::lifetime("policy:total", 10_000);
    let id = ledger
        .reserve(reservation("a", 1_000, vec![cap.clone()]), T0)
        .unwrap();
    ledger.release(id, T0).unwrap();
    // The settlement arrives after all: the money moved, so it is spend, with its receipt.
    ledger.commit(id, 1_000, receipt("late", T0), T0).unwrap();
    let status = ledger.status(std::slice::from_ref(&cap), T0).unwrap();
    assert_eq!(
        (status[0].spent_usd_micros, status[0].reserved_usd_micros),
        (1_000, 0)
    );
    assert_eq!(ledger.all_receipts(None, 10).unwrap().len(), 1);
    assert!(matches!(
        ledger.release(id, T0),
        Err(LedgerError::WrongState {
            state: ReservationState::Committed,
            ..
        })
    ));
}

fn a_pending_payment_stays_counted_and_only_an_unknown_proof_is_claimed_once(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = Cap::lifetime("policy:total", 1_000);
    let mut r = reservation("call-1", 600, vec![cap.clone()]);
    r.lease = Some(lease("owner-a", T0 + 60));
    let id = ledger.reserve(r, T0).unwrap();
    let stage = |at| ledger.pending().unwrap()[0].stage(at);
    assert_eq!(stage(T0), PaymentStage::Reserved);
    ledger.mark_pending(id, "proof-A", T0 + 300).unwrap();
    ledger.mark_pending(id, "proof-A", T0 + 300).unwrap(); // same proof: no-op
    assert!(matches!(
        ledger.mark_pending(id, "proof-B", T0 + 300),
        Err(LedgerError::ProofAlreadyRecorded(_))
    ));
    assert_eq!(stage(T0 + 1), PaymentStage::InFlight);

    // A twin of a call in flight never gets its proof, nor does reconciliation.
    assert!(
        ledger
            .claim_unknown("fp-call-1", &lease("owner-b", T0 + 70), T0 + 10)
            .unwrap()
            .is_none()
    );
    assert!(
        ledger
            .claim(id, &lease("reconcile", T0 + 70), T0 + 10)
            .unwrap()
            .is_none()
    );
    // Renewed, the lease outlives its first term.
    assert_eq!(ledger.renew_leases("owner-a", &[id], T0 + 120).unwrap(), 1);
    assert_eq!(stage(T0 + 100), PaymentStage::InFlight);

    // The call ends without an answer: unknown. One retry claims it; a second finds nothing.
    ledger.disown(id, "owner-a").unwrap();
    assert_eq!(stage(T0 + 101), PaymentStage::Unknown);
    let found = ledger
        .claim_unknown("fp-call-1", &lease("owner-b", T0 + 160), T0 + 101)
        .unwrap()
        .unwrap();
    assert_eq!(found.id, id);
    assert_eq!(found.proof_json.as_deref(), Some("proof-A"));
    assert_eq!(found.keys, vec!["policy:total".to_owned()]);
    assert_eq!(found.owner.as_deref(), Some("owner-b"));
    assert!(
        ledger
            .claim_unknown("fp-call-1", &lease("owner-c", T0 + 160), T0 + 102)
            .unwrap()
            .is_none()
    );
    assert!(
        ledger
            .claim_unknown("fp-other", &lease("owner-c", T0 + 160), T0 + 102)
            .unwrap()
            .is_none()
    );
    // The old owner cannot give up what it no longer owns.
    ledger.disown(id, "owner-a").unwrap();
    assert_eq!(stage(T0 + 103), PaymentStage::InFlight);
    // Its owner dies: once the lease lapses, it is unknown again, and claimable.
    assert_eq!(stage(T0 + 161), PaymentStage::Unknown);
    assert!(
        ledger
            .claim(id, &lease("reconcile", T0 + 230), T0 + 170)
            .unwrap()
            .is_some()
    );

    let status = ledger
        .status(std::slice::from_ref(&cap), T0 + 3_600)
        .unwrap();
    assert_eq!(status[0].reserved_usd_micros, 600);
    assert!(exceeded(
        &ledger.reserve(reservation("call-2", 600, vec![cap]), T0)
    ));
    ledger.commit(id, 600, receipt("r1", T0), T0).unwrap();
    assert!(ledger.pending().unwrap().is_empty());
    assert!(
        ledger
            .claim_unknown("fp-call-1", &lease("owner-d", T0 + 300), T0 + 200)
            .unwrap()
            .is_none()
    );
}

fn commit_with_a_lower_actual_amount_counts_the_actual(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let caps = vec![
        Cap::lifetime("policy:total", 10_000),
        Cap::rolling("policy:per-day", 5_000, 86_400),
    ];
    let id = ledger
        .reserve(reservation("a", 5_000, caps.clone()), T0)
        .unwrap();
    ledger.commit(id, 1_200, receipt("a", T0), T0).unwrap();
    for s in ledger.status(&caps, T0).unwrap() {
        assert_eq!(
            (s.spent_usd_micros, s.reserved_usd_micros),
            (1_200, 0),
            "{}",
            s.key
        );
    }
    let row = &ledger.all_receipts(None, 10).unwrap()[0];
    assert_eq!(
        (row.reserved_usd_micros, row.amount_usd_micros),
        (5_000, 1_200)
    );
}

fn committing_twice_records_spend_once(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = Cap::lifetime("policy:total", 10_000);
    let id = ledger
        .reserve(reservation("a", 1_000, vec![cap.clone()]), T0)
        .unwrap();
    ledger.commit(id, 1_000, receipt("tx1", T0), T0).unwrap();
    ledger
        .commit(id, 1_000, receipt("tx1", T0), T0 + 1)
        .unwrap(); // same receipt: no-op
    assert!(matches!(
        ledger.commit(id, 1_000, receipt("tx2", T0), T0),
        Err(LedgerError::WrongState { .. })
    ));
    assert!(matches!(
        ledger.release(id, T0),
        Err(LedgerError::WrongState { .. })
    ));
    // The same payment cannot settle a second reservation either.
    let other = ledger
        .reserve(reservation("b", 1_000, vec![cap.clone()]), T0)
        .unwrap();
    assert!(matches!(
        ledger.commit(other, 1_000, receipt("tx1", T0), T0),
        Err(LedgerError::ReceiptAlreadyRecorded { .. })
    ));
    let status = ledger.status(&[cap], T0).unwrap();
    assert_eq!(
        (status[0].spent_usd_micros, status[0].reserved_usd_micros),
        (1_000, 1_000)
    );
    assert_eq!(ledger.all_receipts(None, 10).unwrap().len(), 1);
    assert!(matches!(
        ledger.commit(ReservationId(999), 1, receipt("x", T0), T0),
        Err(LedgerError::UnknownReservation(ReservationId(999)))
    ));
}

fn a_payment_must_fit_every_cap_and_exceeded_names_the_cap(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let parent = Cap::lifetime("budget:parent", 10_000);
    let child = Cap::lifetime("budget:child", 3_000);
    let policy = Cap::lifetime("policy:total", 1_000_000);
    let id = ledger
        .reserve(
            reservation(
                "a",
                2_500,
                vec![policy.clone(), parent.clone(), child.clone()],
            ),
            T0,
        )
        .unwrap();
    ledger.commit(id, 2_500, receipt("a", T0), T0).unwrap();
    let err = ledger
        .reserve(
            reservation(
                "b",
                1_000,
                vec![policy.clone(), parent.clone(), child.clone()],
            ),
            T0,
        )
        .unwrap_err();
    match &err {
        LedgerError::Exceeded {
            key,
            limit_usd_micros,
            spent_usd_micros,
            reserved_usd_micros,
            requested_usd_micros,
            window_secs,
        } => {
            assert_eq!(key, "budget:child");
            assert_eq!(
                (
                    *limit_usd_micros,
                    *spent_usd_micros,
                    *reserved_usd_micros,
                    *requested_usd_micros
                ),
                (3_000, 2_500, 0, 1_000)
            );
            assert_eq!(*window_secs, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("budget:child"), "{err}");
    assert!(err.to_string().contains("nothing was reserved"), "{err}");
    // Nothing was written: the parent and the policy did not move.
    let status = ledger.status(&[policy, parent], T0).unwrap();
    assert!(
        status
            .iter()
            .all(|s| s.spent_usd_micros == 2_500 && s.reserved_usd_micros == 0)
    );
    assert!(ledger.pending().unwrap().is_empty());
}

fn receipts_are_listed_per_key_newest_first_including_descendants(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let parent = Cap::lifetime("budget:parent", 100_000);
    let child = Cap::lifetime("budget:child", 100_000);
    let sibling = Cap::lifetime("budget:sibling", 100_000);
    let pay = |call: &str, caps: Vec<Cap>, at: u64| {
        let id = ledger.reserve(reservation(call, 100, caps), at).unwrap();
        ledger.commit(id, 100, receipt(call, at), at).unwrap();
    };
    pay("p1", vec![parent.clone()], T0);
    pay("c1", vec![parent.clone(), child.clone()], T0 + 1);
    pay("s1", vec![parent.clone(), sibling.clone()], T0 + 2);
    pay("c2", vec![parent.clone(), child.clone()], T0 + 3);

    let ids = |rows: Vec<tollgate::ledger::ReceiptRow>| {
        rows.into_iter().map(|r| r.receipt_id).collect::<Vec<_>>()
    };
    let key = |c: &Cap| c.key.clone();
    assert_eq!(
        ids(ledger.receipts(&[key(&parent)], None, 10).unwrap()),
        ["c2", "s1", "c1", "p1"]
    );
    assert_eq!(
        ids(ledger.receipts(&[key(&child)], None, 10).unwrap()),
        ["c2", "c1"]
    );
    assert_eq!(
        ids(ledger
            .receipts(&[key(&child), key(&sibling)], None, 10)
            .unwrap()),
        ["c2", "s1", "c1"]
    );
    // Several matching keys list a receipt once.
    assert_eq!(
        ids(ledger
            .receipts(&[key(&parent), key(&child)], Some(T0 + 1), 2)
            .unwrap()),
        ["c2", "s1"]
    );
    assert_eq!(
        ids(ledger.all_receipts(Some(T0 + 2), 10).unwrap()),
        ["c2", "s1"]
    );
    let row = &ledger.receipts(&[key(&child)], None, 1).unwrap()[0];
    assert_eq!(row.keys, ["budget:child", "budget:parent"]);
    assert_eq!(row.committed_at, T0 + 3);
    assert_eq!(row.tool, "search");
    assert_eq!(row.json, r#"{"tx":"c2"}"#);
}

fn revocations_are_durable_and_checked_across_a_chain(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    {
        let ledger = place.open();
        ledger.revoke("aa11", T0).unwrap();
        ledger.revoke("aa11", T0 + 5).unwrap();
    }
    let ledger = place.open();
    assert!(ledger.is_revoked(&["ff00".into(), "aa11".into()]).unwrap());
    assert!(!ledger.is_revoked(&["ff00".into()]).unwrap());
    assert!(!ledger.is_revoked(&[]).unwrap());
}

#[test]
fn a_fresh_ledger_is_migrated_and_reopening_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    let id = ledger
        .reserve(reservation("a", 5, vec![Cap::lifetime("k", 10)]), T0)
        .unwrap();
    drop(ledger);
    let path = dir.path().join(tollgate::ledger::FILE_NAME);
    let version = |path: &Path| -> i64 {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&path), Ledger::SCHEMA_VERSION);
    let ledger = Ledger::open(dir.path()).unwrap();
    let ledger2 = Ledger::open(dir.path()).unwrap();
    assert_eq!(version(&path), Ledger::SCHEMA_VERSION);
    assert_eq!(ledger.pending().unwrap()[0].id, id);
    assert_eq!(ledger2.pending().unwrap().len(), 1);
}

#[test]
fn an_old_version_file_is_migrated_keeping_what_it_holds() {
    // Version 0: a SQLite file tollgate has not set up yet (here with something in it).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tollgate::ledger::FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('kept');")
            .unwrap();
    }
    let ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .reserve(reservation("a", 5, vec![Cap::lifetime("k", 10)]), T0)
        .unwrap();
    drop(ledger);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    let kept: String = conn
        .query_row("SELECT body FROM notes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        (version, mode.as_str(), kept.as_str()),
        (Ledger::SCHEMA_VERSION, "wal", "kept")
    );
}

#[test]
fn refuses_a_file_from_a_newer_tollgate() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(tollgate::ledger::FILE_NAME);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", Ledger::SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = Ledger::open(dir.path()).unwrap_err();
    assert!(matches!(err, LedgerError::NewerSchema { .. }), "{err:?}");
    assert!(err.to_string().contains("upgrade tollgate"), "{err}");
}

#[cfg(unix)]
#[test]
fn the_ledger_file_and_a_new_state_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let ledger = Ledger::open(&state).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(std::path::Path::new(&ledger.location())), 0o600);
    ledger
        .reserve(reservation("a", 5, vec![Cap::lifetime("k", 10)]), T0)
        .unwrap();
    let wal = state.join(format!("{}-wal", tollgate::ledger::FILE_NAME));
    assert_eq!(mode(&wal), 0o600);
}

fn amounts_beyond_64_bit_integers_are_refused_not_wrapped(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let r = ledger.reserve(
        reservation("a", u64::MAX, vec![Cap::lifetime("k", u64::MAX)]),
        T0,
    );
    assert!(matches!(r, Err(LedgerError::OutOfRange { .. })), "{r:?}");
    // A limit of u64::MAX is fine: only stored values must fit.
    ledger
        .reserve(reservation("b", 1, vec![Cap::lifetime("k", u64::MAX)]), T0)
        .unwrap();
}

fn eight_connections_racing_to_claim_one_unknown_payment_claim_it_once(backend: Backend) {
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let id = ledger
        .reserve(
            reservation("raced", 500, vec![Cap::lifetime("policy:total", 10_000)]),
            T0,
        )
        .unwrap();
    ledger.mark_pending(id, "proof", T0 + 300).unwrap(); // no owner: unknown
    let barrier = Arc::new(Barrier::new(8));
    let winners: Vec<bool> = (0..8)
        .map(|t| {
            let (state, config, barrier) =
                (place.state().to_owned(), place.config(), barrier.clone());
            std::thread::spawn(move || {
                let ledger = Ledger::open_with(&state, &config).unwrap();
                barrier.wait();
                ledger
                    .claim_unknown("fp-raced", &lease(&format!("retry-{t}"), T0 + 60), T0)
                    .unwrap()
                    .is_some()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(winners.iter().filter(|w| **w).count(), 1, "{winners:?}");
}

/// A proof made inside the reservation's transaction is recorded with it (pending, one
/// write); a proof that cannot be made writes nothing; a reservation that does not fit never
/// asks for a proof.
fn a_reservation_and_its_proof_are_written_together_or_not_at_all(backend: Backend) {
    use tollgate::ledger::Proved;
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = total_cap(2, 1_000);

    let id = ledger
        .reserve_proved(reservation("a", 1_000, vec![cap.clone()]), T0, &mut |id| {
            Ok(Proved {
                proof_json: format!(r#"{{"signed_for":{}}}"#, id.0),
                valid_before: T0 + 60,
            })
        })
        .unwrap();
    let open = ledger.pending().unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].id, id);
    assert_eq!(open[0].state, ReservationState::Pending);
    assert_eq!(
        open[0].proof_json.as_deref(),
        Some(format!(r#"{{"signed_for":{}}}"#, id.0).as_str())
    );
    assert_eq!(open[0].valid_before, Some(T0 + 60));

    let refused =
        ledger.reserve_proved(reservation("b", 1_000, vec![cap.clone()]), T0, &mut |_| {
            Err("the wallet is locked".to_owned())
        });
    assert!(
        matches!(&refused, Err(LedgerError::NotProved(why)) if why == "the wallet is locked"),
        "{refused:?}"
    );
    assert_eq!(ledger.pending().unwrap().len(), 1, "nothing written for b");
    let status = ledger.status(std::slice::from_ref(&cap), T0).unwrap();
    assert_eq!(status[0].reserved_usd_micros, 1_000, "{status:?}");

    // The second payment still fits; a third does not, and is never proved.
    ledger
        .reserve_proved(reservation("c", 1_000, vec![cap.clone()]), T0, &mut |_| {
            Ok(Proved {
                proof_json: "{}".to_owned(),
                valid_before: T0 + 60,
            })
        })
        .unwrap();
    let mut asked = false;
    let over = ledger.reserve_proved(reservation("d", 1_000, vec![cap]), T0, &mut |_| {
        asked = true;
        Ok(Proved {
            proof_json: "{}".to_owned(),
            valid_before: T0 + 60,
        })
    });
    assert!(exceeded(&over), "{over:?}");
    assert!(!asked, "a reservation that does not fit is never proved");
}

// What only the PostgreSQL backend has: its URL, its schema table, and its callers' runtimes.

#[test]
fn postgres_schema_is_versioned_and_a_newer_one_is_refused() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let url = place.url.clone().unwrap();
    let ledger = tollgate::ledger::PostgresLedger::open(&url, 2).unwrap();
    assert_eq!(
        ledger.schema_version().unwrap(),
        tollgate::ledger::postgres::SCHEMA_VERSION
    );
    drop(ledger);
    // Opening again (another host) finds it current and changes nothing.
    let again = tollgate::ledger::PostgresLedger::open(&url, 2).unwrap();
    assert_eq!(
        again.schema_version().unwrap(),
        tollgate::ledger::postgres::SCHEMA_VERSION
    );
    drop(again);
    support::ledgers::admin_sql(&url, "UPDATE tollgate_schema SET version = version + 1");
    let err = tollgate::ledger::PostgresLedger::open(&url, 2).unwrap_err();
    assert!(matches!(err, LedgerError::NewerSchema { .. }), "{err:?}");
    assert!(err.to_string().contains("upgrade tollgate"), "{err}");
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    // Port 1 on loopback: nothing listens there.
    let err =
        tollgate::ledger::PostgresLedger::open("postgres://alice:sekrit@127.0.0.1:1/books", 1)
            .unwrap_err()
            .to_string();
    assert!(err.contains("postgres://127.0.0.1:1/books"), "{err}");
    assert!(!err.contains("sekrit") && !err.contains("alice"), "{err}");
    let err =
        tollgate::ledger::PostgresLedger::open("postgres://alice:sekrit@h/d?sslmode=maybe", 1)
            .unwrap_err()
            .to_string();
    assert!(err.contains("sslmode") && !err.contains("sekrit"), "{err}");
}

#[test]
fn hosts_sharing_a_database_agree_on_what_was_recorded_first() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let (one, two) = (place.open(), place.open());
    assert_eq!(one.agree_on("root_key_fingerprint", "aa").unwrap(), "aa");
    assert_eq!(two.agree_on("root_key_fingerprint", "bb").unwrap(), "aa");
    // SQLite's ledger is only reachable beside its own root key: nothing to agree on.
    let Some(local) = Place::new(Backend::Sqlite) else {
        return;
    };
    assert_eq!(
        local.open().agree_on("root_key_fingerprint", "bb").unwrap(),
        "bb"
    );
}

/// The traits are synchronous: async callers use `block_in_place` (on a multi-thread
/// runtime's worker) or `spawn_blocking`, or call straight from a worker. The PostgreSQL
/// backend blocks on its own runtime, which must work from all three, and a ledger dropped
/// inside async code must not panic.
#[test]
fn the_postgres_ledger_serves_async_callers_and_drops_inside_a_runtime() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let ledger = place.open();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let cap = total_cap(2, 10);
        let in_place = tokio::task::block_in_place(|| {
            ledger.reserve(reservation("a", 10, vec![cap.clone()]), T0)
        })
        .unwrap();
        let shared = ledger.clone();
        let blocking = tokio::task::spawn_blocking(move || {
            shared.reserve(reservation("b", 10, vec![total_cap(2, 10)]), T0)
        })
        .await
        .unwrap()
        .unwrap();
        assert_ne!(in_place, blocking);
        let status = tokio::task::block_in_place(|| ledger.status(&[cap], T0)).unwrap();
        assert_eq!(status[0].reserved_usd_micros, 20);
        // Straight from a worker, as `serve` does at start: it steps out of this runtime.
        assert_eq!(ledger.pending().unwrap().len(), 2);
        drop(ledger); // the last handle, inside async code
    });
}

/// A pool whose connections are all busy makes a caller wait, with a bound, then fail with an
/// error that says so (and reserves nothing); the busy call is not disturbed.
#[test]
fn an_exhausted_pool_waits_a_bounded_time_then_says_so() {
    use std::time::{Duration, Instant};
    use tollgate::ledger::Proved;
    use tollgate::ledger::prelude::*;
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let url = place.url.clone().unwrap();
    let ledger = Arc::new(
        tollgate::ledger::PostgresLedger::open_waiting(&url, 1, Duration::from_millis(300))
            .unwrap(),
    );
    let cap = total_cap(10, 10);
    let holder = {
        let (ledger, cap) = (ledger.clone(), cap.clone());
        std::thread::spawn(move || {
            // Holds the only connection for 1.5 s, inside its transaction.
            ledger.reserve_proved(reservation("slow", 10, vec![cap]), T0, &mut |_| {
                std::thread::sleep(Duration::from_millis(1_500));
                Ok(Proved {
                    proof_json: "{}".to_owned(),
                    valid_before: T0 + 60,
                })
            })
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let asked = Instant::now();
    let err = ledger
        .reserve(reservation("queued", 10, vec![cap.clone()]), T0)
        .unwrap_err();
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1_200),
        "waited {waited:?}"
    );
    let text = err.to_string();
    assert!(text.contains("no free connection"), "{text}");
    assert!(
        text.contains("all 1 in use") && text.contains("pool_size"),
        "{text}"
    );
    assert!(!text.contains(&url), "{text}");
    holder.join().unwrap().unwrap();
    // Once free, the pool serves again; only the slow payment was reserved.
    assert_eq!(
        ledger.status(&[cap], T0).unwrap()[0].reserved_usd_micros,
        10
    );
}

/// `sslmode=require` encrypts (the server sees TLS); `verify-full` checks the certificate
/// against `sslrootcert` (the test cluster's own CA) and refuses one that no trusted root
/// signed, naming the database and not the URL.
#[test]
fn tls_is_used_when_the_url_asks_and_verify_full_checks_the_certificate() {
    use tollgate::ledger::PostgresLedger;
    use tollgate::ledger::prelude::*;
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let Some(ca) = support::ledgers::ca_file() else {
        return;
    };
    let base = place.url.clone().unwrap();
    let db = base.rsplit('/').next().unwrap().to_owned();

    let required = PostgresLedger::open(&format!("{base}?sslmode=require"), 1).unwrap();
    required
        .reserve(reservation("tls", 5, vec![Cap::lifetime("k", 10)]), T0)
        .unwrap();
    let encrypted = support::ledgers::admin_query(
        &std::env::var(support::ledgers::PG_URL).unwrap(),
        &format!(
            "SELECT bool_and(s.ssl)::text FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = '{db}' AND a.application_name = 'tollgate'"
        ),
    );
    assert_eq!(
        encrypted.as_deref(),
        Some("true"),
        "the ledger's connection is TLS"
    );
    drop(required);

    let verified =
        PostgresLedger::open(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"), 1).unwrap();
    assert_eq!(verified.pending().unwrap().len(), 1);
    drop(verified);

    // The system's roots do not know the test CA: refused before anything is sent.
    let err = PostgresLedger::open(&format!("{base}?sslmode=verify-full"), 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1"), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let err = PostgresLedger::open(
        &format!("{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"),
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("sslrootcert") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

/// `unless_call_open`: a new call's reservation is made only when no payment of the same call
/// (fingerprint) is open with a proof; then nothing is written, nothing is signed, and the
/// caller looks at what is open (to claim an unknown proof, or pay its own beside a live one).
fn a_new_call_is_not_reserved_while_a_payment_of_the_same_call_is_open(backend: Backend) {
    use tollgate::ledger::Proved;
    let Some(place) = Place::new(backend) else {
        return;
    };
    let ledger = place.open();
    let cap = total_cap(10, 1_000);
    let first_of_call = |call: &str, fingerprint: &str| NewReservation {
        fingerprint: fingerprint.to_owned(),
        unless_call_open: true,
        ..reservation(call, 1_000, vec![cap.clone()])
    };
    let mut signed = 0;
    let mut prove = |_: ReservationId| {
        signed += 1;
        Ok(Proved {
            proof_json: "{}".to_owned(),
            valid_before: T0 + 60,
        })
    };

    // Nothing of the call is open: reserved and proved in one transaction.
    let a = ledger
        .reserve_proved(first_of_call("a", "fp-same"), T0, &mut prove)
        .expect("nothing of the call is open");
    // The same call again while `a` is pending: refused before any signature or hold.
    let again = ledger.reserve_proved(first_of_call("a2", "fp-same"), T0, &mut prove);
    assert!(matches!(again, Err(LedgerError::CallOpen)), "{again:?}");
    let again = ledger.reserve(first_of_call("a3", "fp-same"), T0);
    assert!(matches!(again, Err(LedgerError::CallOpen)), "{again:?}");
    assert_eq!(
        ledger.pending().unwrap().len(),
        1,
        "nothing written for the same call"
    );
    let status = ledger.status(std::slice::from_ref(&cap), T0).unwrap();
    assert_eq!(status[0].reserved_usd_micros, 1_000, "{status:?}");
    // Another call is not held back by it; a caller that looked (`unless_call_open` false)
    // pays its own beside the open one.
    ledger
        .reserve_proved(first_of_call("b", "fp-other"), T0, &mut prove)
        .expect("another call");
    let a4 = ledger
        .reserve_proved(
            NewReservation {
                fingerprint: "fp-same".to_owned(),
                ..reservation("a4", 1_000, vec![cap.clone()])
            },
            T0,
            &mut prove,
        )
        .expect("a call that looked first pays its own");
    // A reserved payment without a proof does not count as open for this purpose.
    let unproved = ledger
        .reserve(first_of_call("c", "fp-reserved"), T0)
        .unwrap();
    ledger
        .reserve(first_of_call("c2", "fp-reserved"), T0)
        .expect("no proof recorded for fp-reserved");
    ledger.release(unproved, T0).unwrap();
    // Once the call's payments are settled, the same call may pay again.
    ledger.commit(a, 1_000, receipt("a", T0), T0).unwrap();
    let still = ledger.reserve(first_of_call("a6", "fp-same"), T0);
    assert!(
        matches!(still, Err(LedgerError::CallOpen)),
        "a4 is open: {still:?}"
    );
    ledger.commit(a4, 1_000, receipt("a4", T0), T0).unwrap();
    ledger
        .reserve_proved(first_of_call("a5", "fp-same"), T0, &mut prove)
        .expect("the earlier payment of the call is settled");
    assert_eq!(signed, 4, "signed for a, b, a4 and a5 only");
}
