//! The address book: node id -> raft address, shared by the run loop (which updates it when
//! membership changes are applied or a snapshot is installed), the transport and `RaftNode`.

use std::sync::{Arc, RwLock};

use crate::config::Peers;

/// Shared, cloneable view of the member addresses.
#[derive(Clone, Default)]
pub struct AddressBook {
    inner: Arc<RwLock<Peers>>,
}

impl AddressBook {
    pub fn new(peers: Peers) -> Self {
        AddressBook {
            inner: Arc::new(RwLock::new(peers)),
        }
    }

    /// The address of `id`, if known.
    pub fn get(&self, id: u64) -> Option<String> {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// A copy of the whole book.
    pub fn to_peers(&self) -> Peers {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the whole book (snapshot install).
    pub fn replace(&self, peers: Peers) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = peers;
    }

    /// Add or update one member.
    pub fn insert(&self, id: u64, addr: String) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr);
    }

    /// Forget one member.
    pub fn remove(&self, id: u64) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
