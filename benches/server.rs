//! Server benchmarks (a bench binary that prints figures; run with `cargo bench --bench server`):
//!
//! * process start → first `tools/list` answer, with 500 tool definitions (target ≤ 30 ms);
//! * idle RSS after serving that answer (target ≤ 30 MB);
//! * overhead of a free tool call through tollgate over a direct HTTP call to the same local
//!   server (target ≤ 200 µs median).
//!
//! Figures, not assertions: this machine is shared and noisy.

#[path = "../tests/support/upstream.rs"]
mod upstream;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use upstream::{Reply, TestUpstream};

const TOOLS: usize = 500;
const STARTS: usize = 30;
const CALLS: usize = 2000;

fn write_setup(dir: &Path, base: &str) {
    std::fs::create_dir_all(dir.join("tools")).unwrap();
    std::fs::write(dir.join("tollgate.toml"), "tools_dir = \"tools\"\n").unwrap();
    let mut text = String::new();
    for i in 0..TOOLS {
        text.push_str(&format!(
            r#"
[[tool]]
name = "tool_{i:03}"
title = "Tool {i}"
description = "Benchmark tool number {i}: looks a city up."
url = "{base}/t{i}?city={{city}}"
query = {{ units = "{{units}}" }}
max_price = "0.01 USD"
annotations = {{ read_only = true }}
[tool.input_schema]
type = "object"
required = ["city"]
additionalProperties = false
properties.city = {{ type = "string", minLength = 1, maxLength = 100 }}
properties.units = {{ type = "string", enum = ["metric", "imperial"] }}
[tool.output_schema]
type = "object"
properties.ok = {{ type = "boolean" }}
"#
        ));
    }
    std::fs::write(dir.join("tools/bench.toml"), text).unwrap();
}

struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    next_id: u64,
}

impl Session {
    fn start(config: &Path) -> Session {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tollgate");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Session {
            child,
            stdin,
            stdout,
            next_id: 1,
        }
    }

    fn send(&mut self, message: Value) {
        let mut line = message.to_string();
        line.push('\n');
        self.stdin.write_all(line.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "tollgate closed stdout"
            );
            let message: Value = serde_json::from_str(&line).unwrap();
            if message["id"] == json!(id) {
                return message;
            }
        }
    }

    fn initialize(&mut self) {
        self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "bench", "version": "0"}}),
        );
        self.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut s = samples.to_vec();
    s.sort();
    s[((s.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let up = runtime.block_on(TestUpstream::start(|_| {
        Reply::json(200, json!({"ok": true}))
    }));
    let dir = tempfile::tempdir().unwrap();
    write_setup(dir.path(), &up.base());
    let config = dir.path().join("tollgate.toml");

    // 1. Start → first tools/list answer.
    let mut starts = Vec::new();
    for _ in 0..STARTS {
        let t0 = Instant::now();
        let mut s = Session::start(&config);
        s.initialize();
        let list = s.request("tools/list", json!({}));
        starts.push(t0.elapsed());
        assert_eq!(
            list["result"]["tools"].as_array().map(Vec::len),
            Some(TOOLS + 3) // the definitions and tollgate's own tools
        );
    }
    println!(
        "start → first tools/list ({TOOLS} tools): median {:.1} ms, min {:.1} ms (target ≤ 30 ms)",
        median(starts.clone()).as_secs_f64() * 1e3,
        starts.iter().min().unwrap().as_secs_f64() * 1e3,
    );

    // 2. Idle RSS after serving.
    let mut s = Session::start(&config);
    s.initialize();
    s.request("tools/list", json!({}));
    std::thread::sleep(Duration::from_millis(300));
    println!(
        "idle RSS after tools/list: {:.1} MB (target ≤ 30 MB)",
        s.rss_kib() as f64 / 1024.0
    );

    // 3. Free call overhead: through tollgate vs the same request sent directly.
    let url = format!("{}/t7?city=Oslo&units=metric", up.base());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let direct: Vec<Duration> = runtime.block_on(async {
        let mut samples = Vec::with_capacity(CALLS);
        for _ in 0..CALLS + 100 {
            let t0 = Instant::now();
            let body = client
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            samples.push(t0.elapsed());
            assert!(!body.is_empty());
        }
        samples.split_off(100)
    });
    let mut through = Vec::with_capacity(CALLS);
    for i in 0..CALLS + 100 {
        let t0 = Instant::now();
        let r = s.request(
            "tools/call",
            json!({"name": "tool_007", "arguments": {"city": "Oslo", "units": "metric"}}),
        );
        if i >= 100 {
            through.push(t0.elapsed());
        }
        assert_eq!(
            r["result"]["structuredContent"]["result"]["ok"],
            json!(true),
            "{r}"
        );
    }
    let (d, t) = (median(direct.clone()), median(through.clone()));
    println!(
        "free call: direct median {:.0} µs, through tollgate median {:.0} µs (p90 {:.0} µs); \
         overhead {:.0} µs (target ≤ 200 µs)",
        d.as_secs_f64() * 1e6,
        t.as_secs_f64() * 1e6,
        percentile(&through, 0.9).as_secs_f64() * 1e6,
        (t.as_secs_f64() - d.as_secs_f64()) * 1e6,
    );
    println!(
        "RSS after {CALLS} calls: {:.1} MB",
        s.rss_kib() as f64 / 1024.0
    );
}
