//! The certificates the file pins, and those it denies: every hello and
//! announcement must come with the one pinned for its host (until an
//! operator re-pins it), and with none on the deny list
//! (`[manager] denied_fingerprints`, which takes effect at the controller's
//! next read of the file: no restart).

use std::sync::{PoisonError, atomic::Ordering};

use tracing::warn;

use super::Manager;
use crate::manager::{db::canonical, events::NewEvent};

/// Why a certificate may not speak for a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::manager) enum Refused {
    /// It is on the deny list.
    Denied,
    /// The file pins another one for the host.
    NotPinned,
}

impl Manager {
    /// Replaces the pinned fingerprints (host name, fingerprint as the
    /// file writes it) with `pins`; the controller calls it on each read of
    /// the file.
    pub fn set_pins<'a>(&self, pins: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let pins = pins
            .into_iter()
            .map(|(h, f)| (canonical(h), normal_fingerprint(f)))
            .collect();
        *self.pins.lock().unwrap_or_else(PoisonError::into_inner) = pins;
    }

    /// Replaces the deny list with `denied` (fingerprints as the file
    /// writes them) and ends every session whose agent presented one.
    pub async fn set_denied(&self, denied: &[String]) {
        let denied: std::collections::HashSet<String> =
            denied.iter().map(|f| normal_fingerprint(f)).collect();
        let changed = {
            let mut current = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = *current != denied;
            *current = denied;
            changed
        };
        if !changed {
            return;
        }
        for (host, session) in self.sessions.lock().await.iter() {
            if self.denied(&session.fingerprint) {
                self.refuse_denied(host, &session.fingerprint);
                session.end();
            }
        }
    }

    /// Whether `fingerprint` is on the deny list.
    pub fn denied(&self, fingerprint: &str) -> bool {
        let fingerprint = normal_fingerprint(fingerprint);
        self.denied
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&fingerprint)
    }

    /// Whether the certificate `fingerprint` may speak for `host`: not
    /// denied, and the one pinned (if any). A refusal is counted and
    /// recorded (see [`Manager::pinned_identity`]).
    pub(in crate::manager) fn identity(
        &self,
        host: &str,
        fingerprint: &str,
    ) -> Result<(), Refused> {
        if self.denied(fingerprint) {
            self.refuse_denied(host, fingerprint);
            return Err(Refused::Denied);
        }
        if !self.pinned_identity(host, fingerprint) {
            return Err(Refused::NotPinned);
        }
        Ok(())
    }

    /// Counts and records a refusal of a denied certificate.
    fn refuse_denied(&self, host: &str, fingerprint: &str) {
        self.identities_refused.fetch_add(1, Ordering::Relaxed);
        warn!(server = %host, %fingerprint, "certificate on the deny list refused");
        self.events.record(
            NewEvent::new(
                "identity-denied",
                format!(
                    "certificate {} is on the deny list (manager.denied_fingerprints)",
                    normal_fingerprint(fingerprint)
                ),
            )
            .server(&canonical(host)),
        );
    }

    /// Whether `fingerprint` may speak for `host`: it is the one pinned,
    /// or nothing is. A refusal is counted, recorded as an event, and the
    /// fingerprint kept for `lbctl server repin`.
    pub fn pinned_identity(&self, host: &str, fingerprint: &str) -> bool {
        let host = canonical(host);
        let pinned = self
            .pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&host)
            .cloned();
        let presented = normal_fingerprint(fingerprint);
        match pinned {
            Some(pin) if pin != presented => {
                self.identities_refused.fetch_add(1, Ordering::Relaxed);
                let first = self
                    .refused_identities
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(host.clone(), presented.clone())
                    .is_none_or(|f| f != presented);
                if first {
                    warn!(server = %host, pinned = %pin, presented = %presented, "certificate other than the pinned one refused");
                    self.events.record(
                        NewEvent::new(
                            "identity-refused",
                            format!(
                                "certificate {presented} is not the one pinned ({pin}); `lbctl server repin {host}` pins it"
                            ),
                        )
                        .server(&host),
                    );
                }
                false
            }
            _ => true,
        }
    }

    /// The fingerprint `host` last presented against its pin, if any.
    pub fn refused_identity(&self, host: &str) -> Option<String> {
        self.refused_identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&canonical(host))
            .cloned()
    }

    /// Forgets `host`'s refused fingerprint (it was re-pinned).
    pub fn forget_refused_identity(&self, host: &str) {
        self.refused_identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&canonical(host));
    }
}

/// A fingerprint as compared: lowercase hex without separators.
pub(super) fn normal_fingerprint(f: &str) -> String {
    f.chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}
