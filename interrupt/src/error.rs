//! Errors of the interrupt hierarchy (host-facing; guest mistakes never produce these).

use thiserror::Error;

/// Host-side failures of the interrupt hierarchy.
#[derive(Debug, Error)]
pub enum Error {
    /// All GSIs usable for routes are taken.
    #[error("no free GSI left (limit {0})")]
    GsiExhausted(u32),
    /// A fixed GSI was requested that is out of the reserved range or already taken.
    #[error("GSI {0} is not available")]
    GsiUnavailable(u32),
    /// Creating the eventfd behind an irqfd failed.
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// Writing an irqfd failed.
    #[error("cannot signal irqfd of GSI {gsi}: {source}")]
    Signal {
        /// GSI whose irqfd could not be written.
        gsi: u32,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// KVM_IRQFD failed.
    #[error("KVM_IRQFD for GSI {gsi} failed: {source}")]
    Irqfd {
        /// GSI of the irqfd.
        gsi: u32,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_GSI_ROUTING failed.
    #[error("KVM_SET_GSI_ROUTING with {routes} routes failed: {source}")]
    SetGsiRouting {
        /// Number of routes in the rejected table.
        routes: usize,
        /// Underlying error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SIGNAL_MSI failed.
    #[error("KVM_SIGNAL_MSI failed: {0}")]
    SignalMsi(#[source] kvm_ioctls::Error),
    /// A vector index outside the domain was used by host code.
    #[error("vector index {index} out of range for domain {domain} ({size} vectors)")]
    IndexOutOfRange {
        /// Domain name.
        domain: String,
        /// Offending index.
        index: usize,
        /// Number of vectors in the domain.
        size: usize,
    },
    /// A domain without a host-signalled chip was asked for a trigger.
    #[error("domain {0} is not host-signalled: its vectors have no trigger")]
    NotHostSignalled(String),
    /// Signalling a host-signalled vector's trigger failed.
    #[error("{domain}: cannot signal the trigger of vector {index}: {source}")]
    Trigger {
        /// Domain name.
        domain: String,
        /// Vector index.
        index: usize,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The domain's chip failed to start or shut down a vector.
    #[error("{domain}: vector {index}: {source}")]
    Chip {
        /// Domain name.
        domain: String,
        /// Vector index.
        index: usize,
        /// The chip's error.
        #[source]
        source: crate::domain::ChipError,
    },
}
