//! Who is calling: credentials (macaroons) presented per request or by the process narrow what
//! may be called and paid; invalid ones are refused with nothing sent or paid.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::mcp::{Mode, Setup, drive, python};
use support::upstream::{Reply, TestUpstream};

use support::seller::BUYER_KEY as KEY;

fn tollgate(args: &[&str], config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn attenuate(token: &str, caveat: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["token", "attenuate", token, "--caveat", caveat])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The bytes of a V2 token's first-party caveat `predicate`: `02 len predicate 00`.
fn caveat_span(bytes: &[u8], predicate: &str) -> std::ops::Range<usize> {
    let at = bytes
        .windows(predicate.len())
        .position(|w| w == predicate.as_bytes())
        .expect("caveat in token");
    assert!(predicate.len() < 128, "one-byte varint length");
    assert_eq!(&bytes[at - 2..at], &[2, predicate.len() as u8]);
    assert_eq!(bytes[at + predicate.len()], 0, "end of the caveat's fields");
    at - 2..at + predicate.len() + 1
}

/// Rewrites a token's bytes (base64url, no padding) without re-signing: a forgery attempt.
fn tamper(token: &str, edit: impl FnOnce(&mut Vec<u8>)) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
    let mut bytes = B64URL.decode(token).expect("token bytes");
    edit(&mut bytes);
    B64URL.encode(bytes)
}

async fn seller() -> TestUpstream {
    TestUpstream::start(|seen| {
        if seen.path() == "/free" {
            return Reply::json(200, json!({"free": true}));
        }
        support::seller::always_settles(seen)
    })
    .await
}

fn text(report: &Value, i: usize) -> String {
    report["steps"][i]["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn call(name: &str, token: Option<&str>) -> Value {
    match token {
        Some(t) => {
            json!({"op": "call_tool", "name": name, "arguments": {}, "meta": {"tollgate/token": t}})
        }
        None => json!({"op": "call_tool", "name": name, "arguments": {}}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_narrow_and_bad_ones_are_refused_with_nothing_paid() {
    let Some(python) = python() else { return };
    let up = seller().await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{0}/paid\"\nmax_price = \"0.05 USD\"\n\
         [[tool]]\nname = \"free\"\ndescription = \"free\"\nurl = \"{0}/free\"\n",
        up.base()
    ));
    let config = setup.config();
    tollgate(&["init"], &config);
    let root = tollgate(&["token", "mint", "--caveat", "tools = paid,free"], &config);
    // A token whose caveats a forger edits in place: changed, removed, reordered.
    const CAP: &str = "max_per_call_usd_micros <= 50000";
    let capped = attenuate(&root, CAP);
    let changed = tamper(&capped, |b| {
        let span = caveat_span(b, CAP);
        b[span.end - 6] = b'9'; // <= 90000
    });
    let removed = tamper(&capped, |b| {
        let span = caveat_span(b, CAP);
        b.drain(span);
    });
    let reordered = tamper(&capped, |b| {
        let first = caveat_span(b, "tools = paid,free");
        let second = caveat_span(b, CAP);
        let (a, c) = (b[first.clone()].to_vec(), b[second.clone()].to_vec());
        let mut swapped = b[..first.start].to_vec();
        swapped.extend(&c);
        swapped.extend(&b[first.end..second.start]);
        swapped.extend(&a);
        swapped.extend(&b[second.end..]);
        *b = swapped;
    });
    let cheap = attenuate(&root, "max_per_call_usd_micros <= 5000");
    let only_free = attenuate(&root, "tools = free");
    let widened = attenuate(&only_free, "tools = free,paid"); // appending cannot widen
    let expired = attenuate(&root, "expires < 1000");
    let mut tampered = root.clone();
    tampered.replace_range(tampered.len() - 4.., "AAAA");
    let foreign = {
        let other = Setup::new("");
        tollgate(&["init"], &other.config());
        tollgate(&["token", "mint"], &other.config())
    };

    let steps = json!([
        call("paid", Some(&root)),
        call("paid", Some(&cheap)),
        call("paid", Some(&only_free)),
        call("paid", Some(&widened)),
        call("paid", Some(&expired)),
        call("paid", Some(&tampered)),
        call("paid", Some(&foreign)),
        call("free", Some(&only_free)),
        call("paid", Some("not a token")),
        call("paid", Some(&changed)),
        call("paid", Some(&removed)),
        call("paid", Some(&reordered)),
        call("paid", Some(&capped)),
    ]);
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &[("TOLLGATE_EVM_KEY", KEY)],
        steps,
    )
    .await;
    assert_eq!(
        report["steps"][0]["result"]["structuredContent"]["payment"]["amount_usd"], "0.01",
        "{report}"
    );
    assert!(
        text(&report, 1).contains("your credential's max_per_call_usd_micros 0.005 USD"),
        "{}",
        text(&report, 1)
    );
    assert!(
        text(&report, 2).contains("does not allow the tool `paid`"),
        "{}",
        text(&report, 2)
    );
    assert!(
        text(&report, 3).contains("does not allow the tool `paid`"),
        "widened: {}",
        text(&report, 3)
    );
    assert!(text(&report, 4).contains("expired"), "{}", text(&report, 4));
    assert!(
        text(&report, 5).contains("credential is refused"),
        "{}",
        text(&report, 5)
    );
    assert!(
        text(&report, 6).contains("signature does not verify"),
        "{}",
        text(&report, 6)
    );
    assert_eq!(
        report["steps"][7]["result"]["structuredContent"]["result"],
        json!({"free": true})
    );
    assert!(
        text(&report, 8).contains("credential is refused"),
        "{}",
        text(&report, 8)
    );
    for (i, what) in [(9, "changed"), (10, "removed"), (11, "reordered")] {
        assert!(
            text(&report, i).contains("signature does not verify"),
            "a {what} caveat: {}",
            text(&report, i)
        );
        assert_eq!(report["steps"][i]["result"]["isError"], true);
    }
    assert_eq!(
        report["steps"][12]["result"]["structuredContent"]["payment"]["amount_usd"],
        "0.01",
        "the untampered token pays: {}",
        text(&report, 12)
    );
    let signed = up
        .seen()
        .iter()
        .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .count();
    assert_eq!(signed, 2, "only the valid credentials paid");
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_hold_across_the_hierarchy_and_the_process_token_applies() {
    let Some(python) = python() else { return };
    let up = seller().await;
    let setup = Setup::new(&format!(
        "[[tool]]\nname = \"paid\"\ndescription = \"paid\"\nurl = \"{}/paid\"\nmax_price = \"0.05 USD\"\n",
        up.base()
    ));
    let config = setup.config();
    tollgate(&["init"], &config);
    // The parent may spend 0.035 USD: three calls of 0.01.
    let parent = tollgate(
        &["token", "mint", "--caveat", "budget_usd_micros <= 35000"],
        &config,
    );
    // Two siblings, each with 0.01 USD (they differ before their budget caveat).
    let a = attenuate(
        &attenuate(&parent, "tools = paid"),
        "budget_usd_micros <= 10000",
    );
    let b = attenuate(
        &attenuate(&parent, "networks = eip155:8453"),
        "budget_usd_micros <= 10000",
    );
    // A child that asks for more than the parent has: the parent's budget still binds.
    let greedy = attenuate(&parent, "budget_usd_micros <= 1000000");

    let steps = json!([
        call("paid", Some(&a)),      // a: 0.01 of 0.01; parent 0.01 of 0.035
        call("paid", Some(&a)),      // a is spent
        call("paid", Some(&b)),      // b untouched by a; parent 0.02
        call("paid", None),          // the process token (the parent): 0.03
        call("paid", Some(&greedy)), // parent has 0.005 left: refused
        call("budget_status", Some(&a)),
        call("list_receipts", Some(&parent)),
        call("list_receipts", Some(&b)),
    ]);
    let report = drive(
        &python,
        Mode::Stateless,
        &config,
        &[("TOLLGATE_EVM_KEY", KEY), ("TOLLGATE_TOKEN", &parent)],
        steps,
    )
    .await;
    let paid = |i: usize| {
        report["steps"][i]["result"]["structuredContent"]["payment"]["amount_usd"] == "0.01"
    };
    assert!(paid(0), "{}", text(&report, 0));
    assert!(
        text(&report, 1).contains("does not fit in your credential's budget"),
        "{}",
        text(&report, 1)
    );
    assert!(
        paid(2),
        "a sibling's spend does not touch its twin: {}",
        text(&report, 2)
    );
    assert!(paid(3), "{}", text(&report, 3));
    let refused = text(&report, 4);
    assert!(
        refused.contains("budget") && refused.contains("spent 0.03 USD"),
        "{refused}"
    );
    let signed = up
        .seen()
        .iter()
        .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
        .count();
    assert_eq!(signed, 3, "exactly three payments");

    // budget_status shows the child's own budget and its ancestor's, which counts everyone.
    let status = &report["steps"][5]["result"]["structuredContent"];
    let caps = status["caps"].as_array().expect("caps");
    assert_eq!(caps.len(), 2, "{status}");
    assert_eq!(caps[0]["limit_usd"], "0.035", "{status}");
    assert_eq!(
        caps[0]["spent_usd"], "0.03",
        "the parent's budget counts every child: {status}"
    );
    assert_eq!(caps[1]["limit_usd"], "0.01");
    assert_eq!(caps[1]["remaining_usd"], "0", "{status}");
    // The parent sees its descendants' receipts; a child sees its own.
    let receipts = |i: usize| {
        report["steps"][i]["result"]["structuredContent"]["receipts"]
            .as_array()
            .map(Vec::len)
    };
    assert_eq!(receipts(6), Some(3), "{}", report["steps"][6]);
    assert_eq!(receipts(7), Some(1), "{}", report["steps"][7]);

    // The owner sees the receipts, and revoking the parent stops its children.
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["receipts", "--format", "json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let receipts: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(receipts.as_array().map(Vec::len), Some(3), "{receipts}");
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["token", "revoke", &parent, "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = drive(
        &python,
        Mode::Legacy,
        &config,
        &[("TOLLGATE_EVM_KEY", KEY)],
        json!([call("paid", Some(&b))]),
    )
    .await;
    assert!(text(&report, 0).contains("revoked"), "{}", text(&report, 0));
    assert_eq!(
        up.seen()
            .iter()
            .filter(|s| s.header("PAYMENT-SIGNATURE").is_some())
            .count(),
        3
    );
}
