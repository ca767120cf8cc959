//! Where log lines go: stderr, written by a thread of their own.
//!
//! A host that pipes tollgate's stderr but reads it late, or never, fills the pipe (64 KiB on
//! Linux), and a process that writes to a full pipe waits. With the log written inline, that
//! wait fell on whatever logged: a paid call could stall after paying and before answering,
//! for as long as the host did not read. Here a call only queues its line; the thread writes
//! the queue out. While stderr is not read and the queue is full, further lines are dropped
//! and counted, and the count is written where they are missing, as soon as the queue takes
//! lines again.
//!
//! Nothing here writes to stdout, which carries MCP frames only.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Log lines queued for stderr, at most (about 1 MiB of typical lines)...
const QUEUED_LINES: usize = 4096;
/// ...and bytes (a trace-level line can carry a whole message).
const QUEUED_BYTES: usize = 4 << 20;
/// How long the process waits, when it ends, for queued lines to reach stderr.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(1);

/// Each message carries how many lines were dropped just before it.
enum Message {
    Line {
        dropped: u64,
        line: Vec<u8>,
    },
    /// Answered once every line queued before it was written.
    Flush {
        dropped: u64,
        done: SyncSender<()>,
    },
}

/// The log's writer: each event becomes one [`Line`], queued whole when it is dropped.
#[derive(Clone)]
pub struct Stderr {
    queue: SyncSender<Message>,
    /// Lines dropped since the last message queued.
    dropped: Arc<AtomicU64>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
}

/// Flushes the queue (for at most [`FLUSH_AT_EXIT`]) when dropped: keep it until `main`
/// returns.
pub struct Flush(Stderr);

impl Stderr {
    /// Starts the writing thread on `out`, and returns the writer for the subscriber and the
    /// guard that flushes at exit.
    pub fn start(out: impl Write + Send + 'static) -> (Stderr, Flush) {
        let (queue, lines) = mpsc::sync_channel(QUEUED_LINES);
        let queued = Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
        let spawned = std::thread::Builder::new()
            .name("tollgate-log".into())
            .spawn(move || write_out(lines, out, &written));
        if let Err(e) = spawned {
            // Without the thread every line is dropped (the queue's receiver is gone); say so
            // once, the only way left.
            eprintln!("tollgate: cannot start the log writer ({e}); logging is off");
        }
        let stderr = Stderr {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            queued,
        };
        (stderr.clone(), Flush(stderr))
    }

    /// Waits until every line queued so far is written, or `within` has passed.
    fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let (answer, written) = mpsc::sync_channel(1);
        while !self.send(|dropped| Message::Flush {
            dropped,
            done: answer.clone(),
        }) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Only the writer answers now (if it is gone, the wait ends at once).
        drop(answer);
        written
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// Queues a line, or counts it dropped when the queue is full.
    fn queue(&self, line: Vec<u8>) {
        let len = line.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > QUEUED_BYTES
            || !self.send(|dropped| Message::Line { dropped, line })
        {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Sends the message `make` builds with the count of lines dropped since the last message
    /// sent; false when the queue is full (the count stays for the next).
    fn send(&self, make: impl FnOnce(u64) -> Message) -> bool {
        let dropped = self.dropped.swap(0, Ordering::AcqRel);
        match self.queue.try_send(make(dropped)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(dropped, Ordering::AcqRel);
                false
            }
            // The writer is gone: nothing can be written any more.
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.0.flush(FLUSH_AT_EXIT);
    }
}

/// One log event, as the subscriber formats it.
pub struct Line<'a> {
    bytes: Vec<u8>,
    to: &'a Stderr,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.bytes.is_empty() {
            self.to.queue(std::mem::take(&mut self.bytes));
        }
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            bytes: Vec::new(),
            to: self,
        }
    }
}

fn write_out(messages: Receiver<Message>, mut out: impl Write, queued: &AtomicUsize) {
    let tell = |out: &mut dyn Write, dropped: u64| {
        if dropped > 0 {
            let _ = writeln!(
                out,
                "tollgate: {dropped} log lines dropped here: stderr was not being read"
            );
        }
    };
    for message in messages {
        match message {
            Message::Line { dropped, line } => {
                tell(&mut out, dropped);
                let _ = out.write_all(&line);
                queued.fetch_sub(line.len(), Ordering::AcqRel);
            }
            Message::Flush { dropped, done } => {
                tell(&mut out, dropped);
                let _ = out.flush();
                let _ = done.try_send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A sink that takes nothing until it is opened, as a pipe nobody reads.
    #[derive(Clone, Default)]
    struct Gate(Arc<Pipe>);

    #[derive(Default)]
    struct Pipe {
        /// Whether it is read, and what was written.
        state: Mutex<(bool, Vec<u8>)>,
        opened: Condvar,
    }

    impl Gate {
        fn open(&self) {
            self.0.state.lock().unwrap().0 = true;
            self.0.opened.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.0.state.lock().unwrap().1.clone()).unwrap()
        }
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let mut state = self
                .0
                .opened
                .wait_while(self.0.state.lock().unwrap(), |(open, _)| !*open)
                .unwrap();
            state.1.extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn log(stderr: &Stderr, text: &str) {
        let mut line = stderr.make_writer();
        line.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn a_stderr_nobody_reads_never_holds_up_the_logger_and_the_loss_is_told_where_it_is() {
        let gate = Gate::default();
        let (stderr, flush) = Stderr::start(gate.clone());
        let started = Instant::now();
        // The writer takes a line and waits in the pipe; the queue fills behind it.
        let total = QUEUED_LINES + 100;
        for i in 0..total {
            log(&stderr, &format!("line {i}\n"));
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "logging waited for the reader"
        );
        assert!(!stderr.flush(Duration::from_millis(50)), "nothing was read");
        gate.open();
        assert!(stderr.flush(Duration::from_secs(10)), "read again");
        log(&stderr, "after\n");
        drop(flush);

        let text = gate.text();
        let lines: Vec<&str> = text.lines().collect();
        let told: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("log lines dropped"))
            .collect();
        assert_eq!(
            told.len(),
            1,
            "{:?}",
            &lines[lines.len().saturating_sub(3)..]
        );
        let dropped: usize = lines[told[0]]
            .strip_prefix("tollgate: ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(dropped >= 99, "{dropped} dropped");
        // Told where the lines are missing: after the last written, before the next.
        assert_eq!(told[0], lines.len() - 2);
        assert_eq!(lines[lines.len() - 1], "after");
        let written: Vec<usize> = lines[..told[0]]
            .iter()
            .map(|l| l.strip_prefix("line ").unwrap().parse().unwrap())
            .collect();
        assert_eq!(
            written.len() + dropped,
            total,
            "every line written or counted"
        );
        assert_eq!(
            written,
            (0..written.len()).collect::<Vec<_>>(),
            "whole and in order"
        );
    }

    #[test]
    fn the_queue_holds_a_bounded_number_of_bytes() {
        let gate = Gate::default();
        let (stderr, flush) = Stderr::start(gate.clone());
        let big = "x".repeat(QUEUED_BYTES / 8) + "\n";
        for _ in 0..20 {
            log(&stderr, &big);
        }
        assert!(stderr.queued.load(Ordering::Acquire) <= QUEUED_BYTES);
        gate.open();
        drop(flush);
        let written = gate.text().lines().filter(|l| l.starts_with('x')).count();
        assert!((7..=9).contains(&written), "{written} of 20 written");
        assert!(
            gate.text()
                .contains(&format!("tollgate: {} log lines dropped", 20 - written))
        );
    }

    #[test]
    fn lines_reach_stderr_whole_by_the_time_the_process_ends() {
        let gate = Gate::default();
        gate.open();
        let (stderr, flush) = Stderr::start(gate.clone());
        for i in 0..100 {
            let mut line = stderr.make_writer();
            // A line in pieces, as a formatter writes it: one line on stderr.
            line.write_all(format!("event {i}").as_bytes()).unwrap();
            line.write_all(b" fields\n").unwrap();
        }
        drop(flush);
        let text = gate.text();
        assert_eq!(text.lines().count(), 100);
        assert!(text.lines().all(|l| l.ends_with(" fields")));
    }
}
