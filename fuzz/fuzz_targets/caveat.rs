//! The caveat language (`tollgate::budget::caveat`): one caveat per line. A caveat that parses
//! prints back to one that parses the same; a chain of them folds to limits no looser than any
//! one of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::caveat::{Caveat, Restrictions};

fuzz_target!(|data: &[u8]| {
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let mut parsed = Vec::new();
    for line in &lines {
        if let Ok(caveat) = Caveat::from_bytes(line) {
            let printed = caveat.to_string();
            assert_eq!(Caveat::parse(&printed).as_ref(), Ok(&caveat), "{printed:?}");
            parsed.push(caveat);
        }
    }
    let Ok(restrictions) = Restrictions::parse(&lines) else {
        return;
    };
    assert_eq!(restrictions, Restrictions::fold(&parsed));
    for caveat in &parsed {
        match caveat {
            Caveat::MaxPerCall(cap) => assert!(restrictions.max_per_call() <= Some(*cap)),
            Caveat::ApproveAbove(cap) => assert!(restrictions.approve_above() <= Some(*cap)),
            Caveat::Expires { before_unix_secs } => {
                assert!(restrictions.expires_before_unix_secs() <= Some(*before_unix_secs))
            }
            _ => {}
        }
    }
    let budgets = parsed
        .iter()
        .filter(|c| matches!(c, Caveat::Budget(_)))
        .count();
    assert_eq!(restrictions.budgets().len(), budgets);
});
