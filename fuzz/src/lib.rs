//! Shared pieces of the fuzz targets in `fuzz_targets/`: the plain-text form of an HTTP answer
//! that the seed corpus is written in.
//!
//! Each target is a thin call into one public parser of the library (so a parser that moves is
//! a one-line change) plus the invariants that are cheap to check on its result.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use tollgate::budget::credential::{ROOT_KEY_FILE, RootKey};

/// The largest single allocation a parser may make while fuzzing (32 MiB). Every input is at
/// most 64 KiB and every parser caps what it reads, so more than this means an allocation
/// sized by a number in the input: a crash, with the input saved.
pub const MAX_ALLOCATION_BYTES: usize = 32 << 20;

/// The most heap live at once (512 MiB), for growth made of many small allocations.
pub const MAX_LIVE_BYTES: usize = 512 << 20;

/// libFuzzer's own `-malloc_limit_mb` only works with a sanitizer's allocator hooks, which a
/// stable build has none of; this allocator enforces the limits instead and aborts, which
/// libFuzzer reports as a crash and saves the input of.
struct LimitedAllocator;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

impl LimitedAllocator {
    fn admit(size: usize) {
        let live = LIVE_BYTES.fetch_add(size, Ordering::Relaxed) + size;
        if size > MAX_ALLOCATION_BYTES || live > MAX_LIVE_BYTES {
            // No allocation here: this runs inside the allocator.
            eprintln!(
                "==tollgate-fuzz== unbounded allocation: {size} bytes at once, {live} bytes \
                 live (limits {MAX_ALLOCATION_BYTES} and {MAX_LIVE_BYTES})"
            );
            std::process::abort();
        }
    }
}

// SAFETY: every call is forwarded to the system allocator unchanged; only the count is ours.
unsafe impl GlobalAlloc for LimitedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::admit(layout.size());
        // SAFETY: the caller's contract for `layout` is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::admit(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, which is the system's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        Self::admit(new_size);
        // SAFETY: as for `dealloc` and `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LimitedAllocator = LimitedAllocator;

/// The time every target judges expiry at (2026-11-01), so a crash replays the same way.
pub const NOW: u64 = 1_793_491_200;

/// The longest problem or seller message a parser may produce: they reach the model and the
/// logs, so they quote excerpts of the input, never the whole of it.
pub const MAX_MESSAGE_CHARS: usize = 8 * 1024;

/// Asserts that the messages a parser produced are short.
pub fn bounded_messages(problems: &[String], seller_error: Option<&str>) {
    for message in problems.iter().map(String::as_str).chain(seller_error) {
        assert!(
            message.chars().count() <= MAX_MESSAGE_CHARS,
            "a message of {} characters",
            message.chars().count()
        );
    }
}

/// A fixed root key (32 bytes of 0x42) in a directory of this process's own.
pub fn root_key() -> &'static RootKey {
    static KEY: OnceLock<RootKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = scratch_dir();
        std::fs::write(dir.join(ROOT_KEY_FILE), [0x42; 32]).expect("write the root key");
        RootKey::load(&dir).expect("load the root key")
    })
}

/// A scratch directory for this process (targets that can only read from a file):
/// `$TOLLGATE_FUZZ_SCRATCH` (scripts/fuzz sets it and removes it after the run), else one under
/// `/dev/shm` (a file written to disk here costs 2 ms, in memory 40 µs), else the temp dir.
pub fn scratch_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("TOLLGATE_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = PathBuf::from("/dev/shm");
                let base = if shm.is_dir() {
                    shm
                } else {
                    std::env::temp_dir()
                };
                base.join(format!("tollgate-fuzz-{}", std::process::id()))
            });
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
    .clone()
}

/// Splits a fuzz input into the headers and body of an HTTP answer.
///
/// The form is what `scripts/fuzz-corpus` writes: `name: value` lines, an empty line, then the
/// body (`\r\n` works too). A line that is not a valid header is skipped, as a client would
/// never see it; an input without an empty line is all headers.
pub fn http_answer(data: &[u8]) -> (HeaderMap, &[u8]) {
    let (head, body) = split_head(data);
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = trim(&line[colon + 1..]);
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    (headers, body)
}

fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    for (i, window) in data.windows(2).enumerate() {
        if window == b"\n\n" {
            return (&data[..i], &data[i + 2..]);
        }
        if window == b"\n\r" && data.get(i + 2) == Some(&b'\n') {
            return (&data[..i], &data[i + 3..]);
        }
    }
    (data, &[])
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    // The instrumented build's coverage hooks live in libFuzzer's runtime (scripts/fuzz test).
    use libfuzzer_sys as _;

    use super::*;

    #[test]
    fn reads_headers_then_body() {
        let (headers, body) = http_answer(b"WWW-Authenticate: L402 a=b\r\nX-Y:  z \r\n\r\n{}");
        assert_eq!(headers["www-authenticate"], "L402 a=b");
        assert_eq!(headers["x-y"], "z");
        assert_eq!(body, b"{}");
    }

    #[test]
    fn an_input_without_an_empty_line_is_all_headers() {
        let (headers, body) = http_answer(b"a: 1\nnot a header\nb: 2");
        assert_eq!(headers.len(), 2);
        assert!(body.is_empty());
    }
}
