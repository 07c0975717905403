//! The assembled hierarchy: one vector layer, one remap layer, and the device domains
//! stacked on them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use log::warn;

use crate::domain::{DeviceDomain, DomainKind, MsiChip};
use crate::ratelimit::RateLimiter;
use crate::relay::{Relay, SignalListener};
use crate::remap::{IrteRanges, RemapLayer, RemapOutcome, RequesterId, RetranslateScope};
use crate::vector::{Gsi, VectorLayer};
use crate::warn_ratelimited;

/// Re-translation failures (a guest rewriting IRTEs in a loop can cause them repeatedly).
static RETRANSLATE_FAILURES: LazyLock<RateLimiter> =
    LazyLock::new(|| RateLimiter::new(10, Duration::from_secs(1)));

/// The interrupt hierarchy of one VM.
pub struct InterruptHierarchy {
    vectors: Arc<dyn VectorLayer>,
    remap: RwLock<Arc<dyn RemapLayer>>,
    domains: Mutex<Vec<Weak<DeviceDomain>>>,
    exhausted_logged: AtomicBool,
    relay: OnceLock<Arc<Relay>>,
}

impl InterruptHierarchy {
    /// Stacks `remap` on `vectors`.
    pub fn new(vectors: Arc<dyn VectorLayer>, remap: Arc<dyn RemapLayer>) -> Arc<Self> {
        Arc::new(Self {
            vectors,
            remap: RwLock::new(remap),
            domains: Mutex::new(Vec::new()),
            exhausted_logged: AtomicBool::new(false),
            relay: OnceLock::new(),
        })
    }

    /// Creates a per-device domain of `size` vectors. With `fixed_gsi_base`, vector `i` uses
    /// GSI `base + i` (the IOAPIC's pins), otherwise GSIs are allocated dynamically.
    pub fn create_domain(
        self: &Arc<Self>,
        name: &str,
        kind: DomainKind,
        requester: RequesterId,
        size: usize,
        fixed_gsi_base: Option<Gsi>,
    ) -> Arc<DeviceDomain> {
        self.create(name, kind, requester, size, fixed_gsi_base, None)
    }

    /// Like [`create_domain`](Self::create_domain), for a domain whose vectors reach their
    /// storage through `chip` (a pass-through device's host vectors, a vhost back-end's call
    /// eventfds, ...).
    pub fn create_domain_with_chip(
        self: &Arc<Self>,
        name: &str,
        kind: DomainKind,
        requester: RequesterId,
        size: usize,
        fixed_gsi_base: Option<Gsi>,
        chip: Arc<dyn MsiChip>,
    ) -> Arc<DeviceDomain> {
        self.create(name, kind, requester, size, fixed_gsi_base, Some(chip))
    }

    fn create(
        self: &Arc<Self>,
        name: &str,
        kind: DomainKind,
        requester: RequesterId,
        size: usize,
        fixed_gsi_base: Option<Gsi>,
        chip: Option<Arc<dyn MsiChip>>,
    ) -> Arc<DeviceDomain> {
        if chip.as_ref().is_some_and(|c| c.host_signalled()) {
            match self.relay() {
                Ok(r) => r.start(),
                Err(e) => warn!("cannot create the interrupt relay: {e}"),
            }
        }
        let d = Arc::new_cyclic(|me| {
            DeviceDomain::new(
                self.clone(),
                name.to_string(),
                kind,
                requester,
                size,
                fixed_gsi_base,
                chip,
                me.clone(),
            )
        });
        let mut domains = self.domains.lock().unwrap_or_else(|e| e.into_inner());
        domains.retain(|w| w.strong_count() > 0);
        domains.push(Arc::downgrade(&d));
        d
    }

    /// The relay thread's state (created with the first host-signalled trigger).
    pub(crate) fn relay(&self) -> std::io::Result<Arc<Relay>> {
        if let Some(r) = self.relay.get() {
            return Ok(r.clone());
        }
        let r = Relay::new()?;
        Ok(self.relay.get_or_init(|| r).clone())
    }

    /// Has the relay thread watch `fd` and call `listener` when it is signalled (for host
    /// signals that are not MSI vectors, e.g. a pass-through device's INTx trigger). Call it
    /// from an unconfined thread (the relay starts here if it is not running).
    pub fn watch_signal(
        &self,
        fd: &vmm_sys_util::eventfd::EventFd,
        listener: std::sync::Weak<dyn SignalListener>,
    ) -> std::io::Result<()> {
        self.relay()?.watch_listener(fd, listener)
    }

    /// Stops watching `fd` (no-op if not watched).
    pub fn unwatch_signal(&self, fd: &vmm_sys_util::eventfd::EventFd) -> std::io::Result<()> {
        self.relay()?.unwatch(fd)
    }

    /// Host-signalled triggers the relay thread watches now (their vectors are masked,
    /// inactive, blocked or without a GSI).
    pub fn relay_watched(&self) -> usize {
        self.relay.get().map_or(0, |r| r.watched())
    }

    /// The CPU vector layer.
    pub fn vector_layer(&self) -> &Arc<dyn VectorLayer> {
        &self.vectors
    }

    /// The remap layer currently in place.
    pub fn remap_layer(&self) -> Arc<dyn RemapLayer> {
        self.remap.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Live domains, in creation order.
    pub fn domains(&self) -> Vec<Arc<DeviceDomain>> {
        self.domains
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    /// Re-translates the active vectors of every domain that `scope` covers (called by the
    /// remap layer after an invalidation or an enable change); returns how many vectors
    /// were re-routed. The new routes are committed before the next fire.
    pub fn retranslate(&self, scope: RetranslateScope) -> usize {
        self.retranslate_each(|d| d.retranslate(scope))
    }

    /// Re-translates exactly the active vectors whose message selects an IRTE in `ranges`
    /// (one walk over the domains however many ranges there are); returns how many vectors
    /// were re-routed.
    pub fn retranslate_irtes(&self, ranges: &IrteRanges) -> usize {
        if ranges.is_empty() {
            return 0;
        }
        self.retranslate_each(|d| d.retranslate_irtes(ranges))
    }

    fn retranslate_each(&self, f: impl Fn(&DeviceDomain) -> crate::Result<usize>) -> usize {
        self.domains()
            .iter()
            .map(|d| {
                f(d).unwrap_or_else(|e| {
                    warn_ratelimited!(
                        RETRANSLATE_FAILURES,
                        "{}: re-translation failed: {e}",
                        d.name()
                    );
                    0
                })
            })
            .sum()
    }

    pub(crate) fn note_gsi_exhausted(&self, limit: u32) {
        if !self.exhausted_logged.swap(true, Ordering::Relaxed) {
            warn!("all {limit} KVM routes in use: further vectors are delivered with KVM_SIGNAL_MSI (slower)");
        }
    }

    /// Renders the hierarchy for a person: layers, then per domain and vector the message,
    /// remap result, GSI, mask/pending state and counters. Vectors that were never active
    /// (no GSI, never fired) are summarised in one line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let s = self.vectors.stats();
        let _ = writeln!(out, "interrupt hierarchy");
        let _ = writeln!(
            out,
            "  vector layer: kvm  routes={} allocated={} commits={} route_changes={} slow_path_msis={}",
            s.routes, s.allocated, s.commits, s.route_changes, s.slow_path_signals
        );
        let remap = self.remap_layer();
        let _ = writeln!(out, "  remap layer: {} {}", remap.name(), remap.summary());
        if self.relay.get().is_some() {
            let _ = writeln!(
                out,
                "  relay: {} host-signalled triggers watched by the VMM",
                self.relay_watched()
            );
        }
        for d in self.domains() {
            let snap = d.snapshot();
            let chip = match d.chip() {
                Some(c) => {
                    let mut t = format!(" chip {}", c.name());
                    if let Some(more) = c.describe() {
                        t.push(' ');
                        t.push_str(&more);
                    }
                    t
                }
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  domain {} [{}] requester {} vectors={}{chip}",
                d.name(),
                d.kind(),
                d.requester(),
                snap.len()
            );
            let host = d.is_host_signalled();
            let mut idle = 0;
            for v in &snap {
                if v.fires == 0 && v.gsi.is_none() {
                    idle += 1;
                    continue;
                }
                let msg = match v.message {
                    None => "-".to_string(),
                    Some(m) => match m.remap_index() {
                        Some(i) => format!("{m} (IRTE {i})"),
                        None => m.to_string(),
                    },
                };
                let remap = match v.remapped {
                    None => "inactive".to_string(),
                    Some(RemapOutcome::Blocked) => "blocked".to_string(),
                    Some(RemapOutcome::Deliver(m)) if Some(m) == v.message => "as-is".to_string(),
                    Some(RemapOutcome::Deliver(m)) => format!("-> {m}"),
                };
                let gsi = v.gsi.map_or("-".to_string(), |g| g.to_string());
                let mut extra = String::new();
                if host {
                    let path = if v.attached { "kvm" } else { "relay" };
                    let _ = write!(extra, " trigger={path} relayed={}", v.relayed);
                }
                if let Some(t) = d.chip().and_then(|c| c.describe_vector(v.index)) {
                    extra.push(' ');
                    extra.push_str(&t);
                }
                let _ = writeln!(
                    out,
                    "    [{:4}] {msg} remap={remap} gsi={gsi} {}{} fires={} delivered={} dropped={}{extra}",
                    v.index,
                    if v.masked { "masked" } else { "unmasked" },
                    if v.pending { " pending" } else { "" },
                    v.fires,
                    v.deliveries,
                    v.dropped
                );
            }
            if idle > 0 {
                let _ = writeln!(
                    out,
                    "    ({idle} vectors inactive: never unmasked with a message, never fired)"
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msi::MsiMessage;
    use crate::remap::NoRemap;
    use crate::vector::{KvmVectorLayer, RecordingBackend};

    #[test]
    fn render_lists_domains_and_active_vectors() {
        let b = Arc::new(RecordingBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b, 24, 4096)),
            Arc::new(NoRemap),
        );
        let d = h.create_domain(
            "serial-test",
            DomainKind::MsiX,
            RequesterId::pci(0, 2, 0),
            8,
            None,
        );
        d.set_message(3, Some(MsiMessage::compose(1, false, 0x41, 0, false)))
            .unwrap();
        d.set_masked(3, false).unwrap();
        d.fire(3).unwrap();
        let text = h.render();
        assert!(
            text.contains("domain serial-test [PCI/MSI-X] requester 00:02.0 vectors=8"),
            "{text}"
        );
        assert!(text.contains("[   3]"), "{text}");
        assert!(
            text.contains("gsi=24 unmasked fires=1 delivered=1"),
            "{text}"
        );
        assert!(text.contains("(7 vectors inactive"), "{text}");
        assert!(text.contains("commits=1"), "{text}");
    }

    #[test]
    fn dropped_domains_disappear_from_the_view() {
        let b = Arc::new(RecordingBackend::default());
        let h = InterruptHierarchy::new(
            Arc::new(KvmVectorLayer::new(b, 24, 4096)),
            Arc::new(NoRemap),
        );
        let d = h.create_domain("x", DomainKind::Msi, RequesterId(0), 1, None);
        assert_eq!(h.domains().len(), 1);
        drop(d);
        assert!(h.domains().is_empty());
    }
}
