//! `tollgate check` validates everything and names each problem with its file and key.

use std::path::Path;
use std::process::Command;

fn check(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run tollgate check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn names_every_broken_definition_with_file_and_key() {
    let (ok, out) = check(Path::new("tests/fixtures/broken/tollgate.toml"));
    assert!(!ok, "check must fail:\n{out}");
    let expected = [
        ("a_unknown_key.toml", "tool[0]", "unknown field `colour`"),
        ("b_undefined_argument.toml", "tool[0].url", "{town}"),
        (
            "c_duplicate.toml",
            "tool[1].name",
            "duplicate tool name `twin`",
        ),
        (
            "d_invalid_schema.toml",
            "tool[0].input_schema",
            "not a valid JSON Schema",
        ),
        (
            "e_host_placeholder.toml",
            "tool[0].url",
            "scheme, host or port",
        ),
        ("f_bad_price.toml", "tool[0].max_price", "five dollars"),
        ("g_not_toml.toml", "line 1", "not valid TOML"),
    ];
    for (file, key, reason) in expected {
        let line = out
            .lines()
            .find(|l| l.contains(file))
            .unwrap_or_else(|| panic!("no problem reported for {file}:\n{out}"));
        assert!(
            line.contains(&format!("{file}: {key}")),
            "{file}: key {key} not named: {line}"
        );
        assert!(
            line.contains(reason),
            "{file}: reason {reason:?} missing: {line}"
        );
    }
}

#[test]
fn passes_on_the_shipped_definitions_and_lists_them() {
    let (ok, out) = check(Path::new("tollgate.toml"));
    assert!(ok, "{out}");
    for row in [
        ["weather_current", "GET", "api.open-meteo.com", "free"],
        // API-key services bill their own accounts: tollgate pays them nothing.
        ["web_search", "GET", "api.search.brave.com", "free"],
        ["translate", "POST", "api-free.deepl.com", "free"],
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(row[0]))
            .unwrap_or_default();
        let cells: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(cells, row, "{out}");
    }
}

#[test]
fn refuses_an_unknown_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(&config, "tools_dir = \"tools\"\n[upstream]\ntimeout = 5\n").unwrap();
    let (ok, out) = check(&config);
    assert!(!ok);
    assert!(
        out.contains("upstream.timeout: unknown field `timeout`"),
        "{out}"
    );
}

#[test]
fn names_each_bad_wallet_and_lightning_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\n\
         [wallet.tempo]\nrpc_url = \"file:///etc/passwd\"\nchain_id = 0\naccount = \"0xnope\"\n\
         [lightning]\nbackend = \"lnbits\"\nurl = \"ftp://x\"\nnetwork = \"moon\"\n",
    )
    .unwrap();
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    for key in [
        "wallet.tempo.rpc_url",
        "wallet.tempo.chain_id",
        "wallet.tempo.account",
        "lightning.url",
        "lightning.network",
    ] {
        assert!(
            out.contains(&format!("{key}: ")),
            "{key} not named in:\n{out}"
        );
    }
    assert!(out.contains("5 problem(s) found"), "{out}");
}

#[test]
fn names_each_bad_http_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\n\
         [http]\nlisten = \"0.0.0.0:8402\"\nmax_body_bytes = 1\nmax_sessions = 0\n\
         session_idle_secs = 0\nallowed_hosts = [\"bad host\"]\nallowed_origins = [\"nope\"]\n",
    )
    .unwrap();
    let (ok, out) = check(&config);
    assert!(!ok, "{out}");
    for key in [
        "http.listen",
        "http.max_body_bytes",
        "http.max_sessions",
        "http.session_idle_secs",
        "http.allowed_hosts[0]",
        "http.allowed_origins[0]",
    ] {
        assert!(
            out.contains(&format!("{key}: ")),
            "{key} not named in:\n{out}"
        );
    }
    assert!(out.contains("behind_tls_proxy"), "{out}");
    assert!(out.contains("6 problem(s) found"), "{out}");

    // A certificate without its key is named.
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\n[http]\ntls_cert = \"cert.pem\"\n",
    )
    .unwrap();
    let (ok, out) = check(&config);
    assert!(!ok && out.contains("http.tls_cert: "), "{out}");

    // Behind a TLS proxy the owner states, a public listener is accepted.
    std::fs::write(
        &config,
        "tools_dir = \"tools\"\n[http]\nlisten = \"0.0.0.0:8402\"\nbehind_tls_proxy = true\n",
    )
    .unwrap();
    let (ok, out) = check(&config);
    assert!(ok, "{out}");
}

#[test]
fn lists_paid_mcp_servers_without_starting_them_and_warns_of_a_missing_program() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tools")).unwrap();
    std::fs::write(
        dir.path().join("tollgate.toml"),
        "tools_dir = \"tools\"\nstate_dir = \"state\"\n",
    )
    .unwrap();
    // A started server would write this file: check must not start it.
    let marker = dir.path().join("started");
    std::fs::write(
        dir.path().join("tools/mcp.toml"),
        format!(
            "[[mcp_upstream]]\nname = \"forecasts\"\ncommand = \"sh\"\n\
             args = [\"-c\", \"touch {}\"]\nmax_price = \"0.01 USD\"\n\
             max_prices = {{ premium = \"0.25 USD\" }}\n\n\
             [[mcp_upstream]]\nname = \"maps\"\nurl = \"https://maps.example.com:8443/mcp?key=secret\"\n\n\
             [[mcp_upstream]]\nname = \"gone\"\ncommand = \"/nonexistent/mcp-server\"\nmax_price = \"0.01 USD\"\n",
            marker.display()
        ),
    )
    .unwrap();
    let (ok, out) = check(&dir.path().join("tollgate.toml"));
    assert!(ok, "a missing program is a warning, not an error: {out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("a row for {name}: {out}"))
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        row("forecasts"),
        [
            "forecasts",
            "forecasts_*",
            "stdio: sh",
            "0.01 USD (1 per tool)"
        ],
        "{out}"
    );
    assert_eq!(
        row("maps"),
        [
            "maps",
            "maps_*",
            "http: https://maps.example.com:8443/mcp",
            "never pays"
        ],
        "{out}"
    );
    assert!(!out.contains("secret"), "no query string is shown: {out}");
    assert!(
        out.contains("warning: mcp_upstream `gone`")
            && out.contains("`/nonexistent/mcp-server` is not found"),
        "{out}"
    );
    assert!(!marker.exists(), "check started an MCP server");
}
