//! A raw MCP session with `tollgate serve` over stdio (JSON-RPC lines), for tests and benches
//! that need many processes, exact timing, or SIGKILL mid-call, where a full client is in the way.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use serde_json::{Value, json};

/// One `tollgate serve` process.
pub struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Session {
    /// Starts `tollgate serve --config config` with `env`, logs off (to see them, set
    /// `TOLLGATE_TEST_STDERR=1` and `RUST_LOG` in `env`), and sends `initialize`
    /// (revision 2025-11-25) and `notifications/initialized` without waiting for the answer.
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Session {
        let stderr = if std::env::var_os("TOLLGATE_TEST_STDERR").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        };
        Session::spawn(config, env, stderr)
    }

    /// Like [`Session::start`], with tollgate's log (`RUST_LOG=tollgate=info`, text) written
    /// to the file `log`, for a test to read what the process did in the background.
    pub fn start_logging(config: &Path, env: &[(&str, &str)], log: &Path) -> Session {
        let file = std::fs::File::create(log).expect("create the log file");
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "RUST_LOG") {
            env.push(("RUST_LOG", "tollgate=info"));
        }
        Session::spawn(config, &env, Stdio::from(file))
    }

    /// Like [`Session::start`], with another `tollgate` binary (a bench comparing two builds).
    pub fn start_program(program: &Path, config: &Path, env: &[(&str, &str)]) -> Session {
        Session::spawn_program(program, config, env, Stdio::null())
    }

    fn spawn(config: &Path, env: &[(&str, &str)], stderr: Stdio) -> Session {
        Session::spawn_program(
            Path::new(env!("CARGO_BIN_EXE_tollgate")),
            config,
            env,
            stderr,
        )
    }

    fn spawn_program(
        program: &Path,
        config: &Path,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Session {
        let mut cmd = Command::new(program);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "off")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tollgate");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut session = Session {
            child,
            stdin,
            stdout,
        };
        session.send(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
        );
        session.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        session
    }

    /// The process id of this `tollgate serve` (its payments' owner ids name it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends one message, as one write of one line, the way hosts do (`writeln!` of a
    /// `Value` on the unbuffered pipe makes one write per JSON token, and tollgate would be
    /// woken for every part of the line).
    pub fn send(&mut self, message: Value) {
        if let Some(stdin) = self.stdin.as_mut() {
            let mut line = message.to_string();
            line.push('\n');
            stdin.write_all(line.as_bytes()).expect("write to tollgate");
        }
    }

    /// Sends `tools/call` with request id `id`.
    pub fn call_tool(&mut self, id: u64, name: &str, arguments: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                         "params": {"name": name, "arguments": arguments}}));
    }

    /// The next response (any id, other than `initialize`'s); `None` when stdout closes.
    pub fn next_response(&mut self) -> Option<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).unwrap_or(0) == 0 {
                return None;
            }
            let message: Value = serde_json::from_str(&line).expect("stdout carries JSON-RPC");
            if message.get("id").is_some() && message["id"] != json!(0) {
                return Some(message);
            }
        }
    }

    /// The response to request `id`; `None` when stdout closes first.
    pub fn response(&mut self, id: u64) -> Option<Value> {
        loop {
            let message = self.next_response()?;
            if message["id"] == json!(id) {
                return Some(message);
            }
        }
    }

    /// SIGKILL, wherever the process is.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes stdin and waits for the process to exit.
    pub fn finish(mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}
