//! Ownership of open payments by live calls.
//!
//! Every payment a call reserves (or claims, to re-send its proof) is owned by this process
//! under a lease of [`LEASE_SECS`], renewed every [`RENEW_EVERY`] while the call runs. The
//! call holds a [`Held`] guard: finishing with a known outcome (settled, released) ends the
//! ownership; ending without one (no answer, cancelled, dropped) gives the payment up, so its
//! outcome is *unknown* and exactly one retry or reconciliation may act on it. A process that
//! dies stops renewing; its leases lapse. On the same host a dead owner is recognised at
//! once from its process id and start time ([`owner_is_dead_here`]), so a restart or
//! `tollgate reconcile` need not wait for the lapse, and a live sibling's payment is never
//! touched.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use crate::ledger::{Lease, Ledger, LedgerError, ReservationId, ReservationState};
use crate::money::now_unix;

/// How long a lease runs without renewal. A process that dies is taken to be gone after this
/// (sooner on the same host: [`owner_is_dead_here`]).
pub const LEASE_SECS: u64 = 60;
/// How often live leases are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(15);

/// This process as an owner of payments: `host:pid:start:random`. The host, process id and
/// the process's start time (from `/proc`, in clock ticks since boot) let another process on
/// the same host tell whether this one is still alive; the random part makes the id unique
/// across hosts and restarts.
pub fn this_process() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}:{}",
        host(),
        own_start_time().unwrap_or_default(),
        hex::encode(rand::random::<[u8; 6]>())
    )
}

/// Whether `owner` (an id from [`this_process`]) names a process on this host that is no
/// longer running. `false` when that cannot be told (another host, an id of another form, no
/// `/proc`): then only the lease's lapse says the owner is gone.
pub fn owner_is_dead_here(owner: &str) -> bool {
    let mut parts = owner.split(':');
    let (Some(host_name), Some(pid), Some(start)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    if host_name != host() || !has_proc() {
        return false;
    }
    // This process: alive (its start time is read once).
    if pid == std::process::id() {
        return own_start_time().is_some_and(|own| own.to_string() != start);
    }
    match start_time(pid) {
        None => true,
        Some(now) => now.to_string() != start,
    }
}

/// This host's name, read once (every call asks whether its payments' owners are alive).
fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().replace(':', "_"))
            .unwrap_or_else(|_| "host".to_owned())
    })
}

/// Whether `/proc` tells processes apart here, read once.
fn has_proc() -> bool {
    static PROC: OnceLock<bool> = OnceLock::new();
    *PROC.get_or_init(|| std::path::Path::new("/proc/self/stat").exists())
}

/// This process's start time, read once.
fn own_start_time() -> Option<u64> {
    static OWN: OnceLock<Option<u64>> = OnceLock::new();
    *OWN.get_or_init(|| start_time(std::process::id()))
}

/// Field 22 of `/proc/<pid>/stat` (the start time), if the process exists.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The payments this process's live calls own, and the task that renews their leases.
#[derive(Debug)]
pub struct Leases {
    ledger: Arc<Ledger>,
    owner: String,
    live: Mutex<HashSet<ReservationId>>,
}

impl Leases {
    /// Starts owning payments for this process; the renewing task runs on the current tokio
    /// runtime, if there is one, until the `Leases` is dropped.
    pub fn new(ledger: Arc<Ledger>) -> Arc<Leases> {
        let leases = Arc::new(Leases {
            ledger,
            owner: this_process(),
            live: Mutex::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(renew(Arc::downgrade(&leases)));
        }
        leases
    }

    /// This process's owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// A fresh lease for a payment this process is about to own.
    pub fn lease(&self, now: u64) -> Lease {
        Lease {
            owner: self.owner.clone(),
            until: now + LEASE_SECS,
        }
    }

    /// Starts holding `id` (reserved or claimed under [`Leases::lease`]) for one call.
    pub fn hold(self: &Arc<Self>, id: ReservationId) -> Held {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        Held {
            leases: self.clone(),
            id,
            sent: false,
            open: true,
        }
    }

    fn forget(&self, id: ReservationId) {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Gives up every open payment whose owner is a dead process on this host (a crash or a
    /// kill): a proof recorded makes its outcome unknown, for a retry or reconciliation to
    /// settle; a reservation whose proof was never recorded is released at once (nothing left
    /// the process, and its hold would block the killed call's retry). Payments of live
    /// processes, here or elsewhere, are left alone. Returns how many reservations were
    /// released and how many payments were given up.
    pub fn disown_dead_owners(ledger: &Ledger) -> Result<(usize, usize), LedgerError> {
        let mut released = 0;
        let mut owned = Vec::new();
        for p in ledger.pending()? {
            let Some(owner) = p.owner else { continue };
            if p.state == ReservationState::Reserved && owner_is_dead_here(&owner) {
                ledger.release(p.id, now_unix())?;
                released += 1;
            } else {
                owned.push((p.id, owner));
            }
        }
        Ok((released, disown_dead(ledger, owned)?))
    }

    /// [`Leases::disown_dead_owners`] for the open payments of one call (`Owners::owners_of`
    /// its fingerprint): a retry of a call whose process died need not wait for the lease to
    /// lapse.
    pub fn disown_dead_among(
        ledger: &Ledger,
        open: Vec<(ReservationId, Option<String>)>,
    ) -> Result<usize, LedgerError> {
        disown_dead(
            ledger,
            open.into_iter()
                .filter_map(|(id, owner)| Some((id, owner?))),
        )
    }
}

/// Gives up each of `owned` (payment, owner) whose owner is a dead process on this host.
fn disown_dead(
    ledger: &Ledger,
    owned: impl IntoIterator<Item = (ReservationId, String)>,
) -> Result<usize, LedgerError> {
    let mut count = 0;
    for (id, owner) in owned {
        if owner_is_dead_here(&owner) {
            ledger.disown(id, &owner)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Renews the leases of live payments until the `Leases` is gone.
async fn renew(leases: Weak<Leases>) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(leases) = leases.upgrade() else {
            return;
        };
        let ids: Vec<ReservationId> = leases
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        if ids.is_empty() {
            continue;
        }
        let until = now_unix() + LEASE_SECS;
        let done = tokio::task::spawn_blocking(move || {
            leases.ledger.renew_leases(&leases.owner, &ids, until)
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "could not renew the leases of payments in flight");
        }
    }
}

/// One call's hold on one open payment. Ends with [`Held::settled`] (a known outcome, written
/// by the caller), or [`Held::disown`] / drop (no known outcome: given up, unknown; or, if no
/// proof was recorded yet, released, since nothing left the process).
#[derive(Debug)]
pub struct Held {
    leases: Arc<Leases>,
    id: ReservationId,
    sent: bool,
    open: bool,
}

impl Held {
    /// The payment held.
    pub fn id(&self) -> ReservationId {
        self.id
    }

    /// A proof was recorded for it: from now on, ending without an outcome leaves it unknown
    /// rather than released.
    pub fn proof_recorded(&mut self) {
        self.sent = true;
    }

    /// The caller wrote a known outcome (settled or released).
    pub fn settled(mut self) {
        self.open = false;
        self.leases.forget(self.id);
    }

    /// The call ends without knowing whether it was paid: the payment is given up (unknown).
    pub fn disown(mut self) {
        self.give_up();
    }

    fn give_up(&mut self) {
        if !self.open {
            return;
        }
        self.open = false;
        self.leases.forget(self.id);
        let ledger = &self.leases.ledger;
        let outcome = if self.sent {
            ledger.disown(self.id, &self.leases.owner)
        } else {
            ledger.release(self.id, now_unix())
        };
        if let Err(e) = outcome {
            tracing::error!(reservation = %self.id, error = %e,
                "could not give up a payment; its lease lapses on its own");
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.give_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_made_up_one_is_not() {
        let me = this_process();
        assert!(!owner_is_dead_here(&me), "{me}");
        let mut parts: Vec<&str> = me.split(':').collect();
        let gone = (u32::MAX - 7).to_string();
        parts[1] = &gone;
        assert!(owner_is_dead_here(&parts.join(":")));
        // Same pid, another start time: the pid was reused by a new process.
        let mut parts: Vec<&str> = me.split(':').collect();
        parts[2] = "1";
        assert!(owner_is_dead_here(&parts.join(":")));
        // Another host, or an id of another form: cannot be told, so not dead.
        assert!(!owner_is_dead_here("elsewhere:1:1:ab"));
        assert!(!owner_is_dead_here("opaque"));
    }
}
