//! Policy files (`tollgate::budget::policy::Policy::load`). The loader reads from a path, so
//! the input is written to this process's scratch directory first.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::budget::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let path = tollgate_fuzz::scratch_dir().join("policy.toml");
    std::fs::write(&path, data).expect("write the policy");
    if let Ok(policy) = Policy::load(&path) {
        // Every profile named as the default exists.
        if let Some(name) = &policy.default_profile {
            assert!(policy.profile(name).is_some());
        }
        assert!(policy.rates.values().all(|&rate| rate > 0));
    }
});
