//! What can go wrong in the ledger, in words a caller (or a model) can act on.

use std::path::PathBuf;

use super::{ReservationId, ReservationState};
use crate::money::UsdMicros;

/// Why a ledger operation failed. Whenever an operation fails, nothing it would have written
/// was written (every operation is one SQLite transaction).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A proof made inside a reservation's transaction ([`super::Reservations::reserve_proved`])
    /// could not be made; nothing was written.
    #[error("{0}")]
    NotProved(String),

    /// The state directory or the ledger file could not be created.
    #[error("cannot create the ledger at {}: {source}", path.display())]
    Create {
        /// The directory or file that could not be created.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },

    /// The backend could not open or set up the ledger.
    #[error("cannot open the ledger {}: {source}", path.display())]
    Open {
        /// The ledger file (or the database named by the ledger URL, without credentials).
        path: PathBuf,
        /// What the backend said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The file system does not support write-ahead logging (typically a network file system),
    /// which the ledger needs to be shared safely between processes.
    #[error(
        "the ledger {} cannot use write-ahead logging (SQLite chose journal mode {mode:?}); \
         put the state directory on a local file system",
        path.display()
    )]
    NotWal {
        /// The ledger file.
        path: PathBuf,
        /// The journal mode SQLite reported instead of `wal`.
        mode: String,
    },

    /// The file was written by a newer tollgate, whose schema this one does not know.
    #[error(
        "the ledger {} has schema version {found}, newer than this tollgate understands \
         ({supported}); upgrade tollgate, or use another state directory",
        path.display()
    )]
    NewerSchema {
        /// The ledger file.
        path: PathBuf,
        /// `PRAGMA user_version` found in the file.
        found: i64,
        /// The newest schema version this build knows.
        supported: i64,
    },

    /// A reservation asked to be made only for a call with nothing open
    /// ([`super::NewReservation::unless_call_open`]) found a payment of the same call with a
    /// proof recorded and still open (in flight, or of unknown outcome); nothing was written.
    #[error("a payment of the same call is still open; nothing was reserved")]
    CallOpen,

    /// A query failed (I/O error, a lock held longer than the busy timeout, a full disk...),
    /// as the backend described it.
    #[error("ledger database error: {0}")]
    Database(String),

    /// The payment does not fit under a cap; nothing was reserved.
    #[error(
        "budget {key:?} would be exceeded: this payment is {}, {} already spent{}, {} reserved \
         by calls in flight, limit {}; nothing was reserved",
        usd(requested_usd_micros),
        usd(spent_usd_micros),
        window(window_secs),
        usd(reserved_usd_micros),
        usd(limit_usd_micros)
    )]
    Exceeded {
        /// The cap's key.
        key: String,
        /// The cap's rolling window, `None` for a lifetime cap.
        window_secs: Option<u64>,
        /// The cap's limit.
        limit_usd_micros: u64,
        /// Spend committed within the window (or ever, for a lifetime cap).
        spent_usd_micros: u64,
        /// Open reservations on this key.
        reserved_usd_micros: u64,
        /// The amount that was asked for.
        requested_usd_micros: u64,
    },

    /// No reservation has this id.
    #[error("there is no reservation {0} in the ledger")]
    UnknownReservation(ReservationId),

    /// The reservation is in a state that does not allow this action (committing a released
    /// reservation, releasing a committed one...).
    #[error("cannot {action} reservation {id}: it is already {state}")]
    WrongState {
        /// The reservation.
        id: ReservationId,
        /// Its state in the ledger.
        state: ReservationState,
        /// What was attempted (`"commit"`, `"release"`, `"mark pending"`).
        action: &'static str,
    },

    /// A different proof was already recorded for this reservation. Sending a second proof
    /// could pay twice; a retry must re-send the recorded one.
    #[error(
        "reservation {0} already has a different payment proof recorded; re-send that proof \
         (see find_pending) instead of making a new one"
    )]
    ProofAlreadyRecorded(ReservationId),

    /// The receipt id is already recorded for another reservation.
    #[error("receipt {receipt_id:?} is already recorded, for reservation {existing}")]
    ReceiptAlreadyRecorded {
        /// The receipt id given to `commit`.
        receipt_id: String,
        /// The reservation that already holds it.
        existing: ReservationId,
    },

    /// An amount or a time does not fit SQLite's signed 64-bit integers.
    #[error("{what} {value} is too large for the ledger (at most {})", i64::MAX)]
    OutOfRange {
        /// Which value (`"amount"`, `"time"`...).
        what: &'static str,
        /// The value given.
        value: u64,
    },

    /// The file holds a value this code never writes (edited by hand, or a bug).
    #[error("the ledger holds an impossible value: {0}")]
    Corrupt(String),
}

fn usd(micros: &u64) -> UsdMicros {
    UsdMicros(*micros)
}

fn window(window_secs: &Option<u64>) -> String {
    match window_secs {
        Some(w) => format!(" in the last {w} s"),
        None => String::new(),
    }
}
