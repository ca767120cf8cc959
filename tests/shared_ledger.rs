//! The ledger shared by several tollgate "hosts" (state directories) through PostgreSQL, as
//! the commands see it: where the URL comes from and what is never shown of it, the root key
//! every host must share, and the books read by `tollgate` commands on any host.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::ledgers::{Backend, Place};
use tollgate::ledger::{Cap, NewApproval, NewReceipt, NewReservation};

/// A host: its own directory with a config naming `state/` and no tools.
fn host(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    let config = dir.join("tollgate.toml");
    std::fs::write(&config, "state_dir = \"state\"\n").unwrap();
    config
}

fn tollgate(config: &Path, url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(args).arg("--config").arg(config);
    match url {
        Some(url) => command.env("TOLLGATE_LEDGER_URL", url),
        None => command.env_remove("TOLLGATE_LEDGER_URL"),
    };
    command.output().expect("run tollgate")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_names_an_unreachable_ledger_without_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let config = host(dir.path());
    let out = tollgate(
        &config,
        Some("postgres://books:hunter2@127.0.0.1:1/ledger"),
        &["check"],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("postgres://127.0.0.1:1/ledger"), "{said}");
    assert!(said.contains("TOLLGATE_LEDGER_URL"), "{said}");
    assert!(
        !said.contains("hunter2") && !said.contains("books@"),
        "{said}"
    );

    let out = tollgate(
        &config,
        Some("postgres://books:hunter2@h/d?sslmode=sure"),
        &["check"],
    );
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("TOLLGATE_LEDGER_URL") && said.contains("sslmode"),
        "{said}"
    );
    assert!(!said.contains("hunter2"), "{said}");
}

#[test]
fn check_reports_a_reachable_ledger_and_changes_nothing() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let config = host(place.dir.path());
    let url = place.url.as_deref().unwrap();
    let out = tollgate(&config, Some(url), &["check"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("reachable, schema version 0"), "{said}");
    let out = tollgate(&config, Some(url), &["ledger", "migrate"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = tollgate(&config, Some(url), &["check"]);
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "schema version {}",
            tollgate::ledger::postgres::SCHEMA_VERSION
        )),
        "{said}"
    );
}

#[test]
fn hosts_with_different_root_keys_are_refused_until_the_key_is_copied() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let url = place.url.as_deref().unwrap();
    let (one, two) = (place.dir.path().join("one"), place.dir.path().join("two"));
    let (config_one, config_two) = (host(&one), host(&two));
    let out = tollgate(&config_one, Some(url), &["init"]);
    assert!(out.status.success(), "{}", text(&out));
    // Host 2 made its own key: it must not share the ledger with it.
    let out = tollgate(&config_two, Some(url), &["init"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("root key is another one"), "{said}");
    assert!(said.contains("root.key"), "{said}");
    let out = tollgate(
        &config_two,
        Some(url),
        &["token", "mint", "--caveat", "budget_usd_micros <= 1000000"],
    );
    assert!(
        !out.status.success(),
        "minting under a foreign key: {}",
        text(&out)
    );
    // Nor does it serve (stdin closed: it would serve until then).
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&config_two)
        .env("TOLLGATE_LEDGER_URL", url)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("root key is another one"), "{said}");
    assert!(out.stdout.is_empty(), "stdout is MCP's only: {said}");
    // Copied from host 1, the key is the ledger's: a credential minted on host 2 verifies
    // on host 1.
    std::fs::copy(one.join("state/root.key"), two.join("state/root.key")).unwrap();
    let out = tollgate(
        &config_two,
        Some(url),
        &["token", "mint", "--caveat", "budget_usd_micros <= 1000000"],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let root_one = tollgate::budget::credential::RootKey::load(&one.join("state")).unwrap();
    tollgate::budget::credential::Credential::verify(&token, &root_one, 0).unwrap();
}

#[test]
fn the_books_and_approvals_of_one_host_are_every_hosts() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let url = place.url.as_deref().unwrap();
    let (one, two) = (place.dir.path().join("one"), place.dir.path().join("two"));
    let (config_one, config_two) = (host(&one), host(&two));
    // Host 1 pays and asks a person.
    let ledger = place.open();
    let id = ledger
        .reserve(
            NewReservation {
                call_id: "call-1".into(),
                fingerprint: "fp-1".into(),
                amount_usd_micros: 10_000,
                caps: vec![Cap::lifetime("policy:total", 1_000_000)],
                tool: "search".into(),
                payee: "0xpayee".into(),
                protocol: "x402".into(),
                meta_json: "{}".into(),
                lease: None,
                unless_call_open: false,
            },
            1_800_000_000,
        )
        .unwrap();
    ledger
        .commit(
            id,
            10_000,
            NewReceipt {
                receipt_id: "0xfeed".into(),
                at: 1_800_000_000,
                json: r#"{"tool":"search","transaction":"0xfeed"}"#.into(),
            },
            1_800_000_000,
        )
        .unwrap();
    let approval = format!("ap_{}", "1".repeat(32));
    ledger
        .create_approval(
            NewApproval {
                id: approval.clone(),
                tool: "search".into(),
                amount_usd_micros: 250_000,
                facts_json: r#"{"tool":"search"}"#.into(),
                expires_at: u64::MAX / 4,
            },
            tollgate::money::now_unix(),
        )
        .unwrap();
    // Host 2 sees the receipt and the approval waiting, and a person approves it there.
    let out = tollgate(&config_two, Some(url), &["receipts", "--format", "json"]);
    assert!(text(&out).contains("0xfeed"), "{}", text(&out));
    let out = tollgate(&config_two, Some(url), &["approvals"]);
    assert!(text(&out).contains(&approval), "{}", text(&out));
    let out = tollgate(&config_two, Some(url), &["approve", &approval]);
    assert!(out.status.success(), "{}", text(&out));
    // Host 1 (and its own state directory with SQLite) sees the decision in the shared ledger.
    let decided = ledger
        .approval(&approval, tollgate::money::now_unix())
        .unwrap()
        .unwrap();
    assert_eq!(decided.state, tollgate::ledger::ApprovalState::Approved);
    assert_eq!(decided.decided_by.as_deref(), Some("cli"));
    let out = tollgate(&config_one, None, &["approvals"]);
    assert!(
        !text(&out).contains(&approval),
        "host 1's own SQLite ledger is another one"
    );
}

/// What a moved ledger must still say: every open payment, receipt, budget, cap, approval,
/// kept token and revocation, read through the traits.
fn books(ledger: &tollgate::ledger::Ledger, caps: &[Cap]) -> String {
    let now = 1_800_000_500;
    format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        ledger.pending().unwrap(),
        ledger.all_receipts(None, 100).unwrap(),
        ledger.budget_tree().unwrap(),
        ledger.status(caps, now).unwrap(),
        ledger.pending_approvals(now).unwrap(),
        ledger.token("https://x.example", "svc", now).unwrap(),
        ledger.is_revoked(&["token:gone".to_owned()]).unwrap(),
    )
}

#[test]
fn a_sqlite_ledger_moves_into_postgres_with_everything_it_holds() {
    let Some(place) = Place::new(Backend::Postgres) else {
        return;
    };
    let url = place.url.as_deref().unwrap();
    let config = host(place.dir.path());
    let state = place.dir.path().join("state");
    let t0 = 1_800_000_000;
    let caps = vec![
        Cap::lifetime("policy:total", 1_000_000),
        Cap::rolling("policy:per-day", 500_000, 86_400),
        Cap::lifetime("budget:child", 200_000),
    ];
    {
        let sqlite = tollgate::ledger::Ledger::open(&state).unwrap();
        sqlite
            .register_budgets(
                &[
                    tollgate::ledger::BudgetNode {
                        key: "budget:root".into(),
                        label: None,
                        limit_usd_micros: 900_000,
                    },
                    tollgate::ledger::BudgetNode {
                        key: "budget:child".into(),
                        label: Some("sub-agent".into()),
                        limit_usd_micros: 200_000,
                    },
                ],
                t0,
            )
            .unwrap();
        for (i, amount) in [30_000u64, 40_000, 50_000].into_iter().enumerate() {
            let id = sqlite
                .reserve(
                    NewReservation {
                        call_id: format!("call-{i}"),
                        fingerprint: format!("fp-{i}"),
                        amount_usd_micros: amount,
                        caps: caps.clone(),
                        tool: "search".into(),
                        payee: "0xpayee".into(),
                        protocol: "x402".into(),
                        meta_json: "{}".into(),
                        lease: Some(tollgate::ledger::Lease {
                            owner: "host-1/42".into(),
                            until: t0 + 60,
                        }),
                        unless_call_open: false,
                    },
                    t0 + i as u64 * 3_700,
                )
                .unwrap();
            match i {
                0 | 1 => sqlite
                    .commit(
                        id,
                        amount - 1_000,
                        NewReceipt {
                            receipt_id: format!("0xtx{i}"),
                            at: t0,
                            json: format!(r#"{{"transaction":"0xtx{i}"}}"#),
                        },
                        t0 + i as u64 * 3_700,
                    )
                    .unwrap(),
                _ => sqlite
                    .mark_pending(id, r#"{"sig":"0xabc"}"#, t0 + 300)
                    .unwrap(),
            }
        }
        sqlite
            .create_approval(
                NewApproval {
                    id: format!("ap_{}", "2".repeat(32)),
                    tool: "search".into(),
                    amount_usd_micros: 250_000,
                    facts_json: "{}".into(),
                    expires_at: t0 + 10_000,
                },
                t0,
            )
            .unwrap();
        sqlite
            .store_token(&tollgate::ledger::PaidToken {
                origin: "https://x.example".into(),
                service: "svc".into(),
                scheme: "L402".into(),
                macaroon: "mac".into(),
                preimage: "00".repeat(32),
                payment_hash: "11".repeat(32),
                expires_at: None,
                created_at: t0,
            })
            .unwrap();
        sqlite.revoke("token:gone", t0).unwrap();
    }
    let before = books(&*tollgate::ledger::Ledger::open(&state).unwrap(), &caps);

    let export = tollgate(&config, None, &["ledger", "export"]);
    assert!(export.status.success(), "{}", text(&export));
    let dump = place.dir.path().join("ledger.jsonl");
    std::fs::write(&dump, &export.stdout).unwrap();
    let mut import = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    import
        .args(["ledger", "import", "--config"])
        .arg(&config)
        .env("TOLLGATE_LEDGER_URL", url)
        .stdin(std::fs::File::open(&dump).unwrap());
    let out = import.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 reservations"), "{}", text(&out));

    let postgres = place.open();
    assert_eq!(books(&*postgres, &caps), before);
    // New reservations continue after the imported ids, and the caps still hold.
    let next = postgres
        .reserve(
            NewReservation {
                call_id: "after".into(),
                fingerprint: "fp-after".into(),
                amount_usd_micros: 1_000,
                caps: caps.clone(),
                tool: "search".into(),
                payee: "0xpayee".into(),
                protocol: "x402".into(),
                meta_json: "{}".into(),
                lease: None,
                unless_call_open: false,
            },
            t0 + 8_000,
        )
        .unwrap();
    assert_eq!(next.0, 4);
    // A second import into the now used ledger is refused and changes nothing.
    let mut again = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    again
        .args(["ledger", "import", "--config"])
        .arg(&config)
        .env("TOLLGATE_LEDGER_URL", url)
        .stdin(std::fs::File::open(&dump).unwrap());
    let out = again.output().unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("empty"), "{}", text(&out));
    assert_eq!(postgres.pending().unwrap().len(), 2);
}
