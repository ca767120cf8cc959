//! Tool definitions (`tools/*.toml`): TOML into `[[tool]]` tables
//! (`tollgate::config::parse_toml`), then every check and compilation
//! (`tollgate::catalog::Catalog::from_specs`, `compile_all`).
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use tollgate::catalog::{Catalog, ToolSpec};
use tollgate::config::{UpstreamDefaults, parse_toml};

/// The shape of a tools file (the library's own is private to `catalog`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolFile {
    #[serde(default)]
    tool: Vec<ToolSpec>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let Ok(file) = parse_toml::<ToolFile>(path, text) else {
        return;
    };
    let count = file.tool.len();
    let specs: Vec<(PathBuf, usize, ToolSpec)> = file
        .tool
        .into_iter()
        .enumerate()
        .map(|(i, spec)| (path.to_owned(), i, spec))
        .collect();
    if let Ok(catalog) = Catalog::from_specs(specs, &UpstreamDefaults::default()) {
        assert_eq!(catalog.len(), count);
        let _ = catalog.compile_all();
        for tool in catalog.iter() {
            let _ = (tool.host(), tool.port());
        }
    }
});
