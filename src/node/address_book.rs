//! The address book: node id -> raft address, shared by the run loop (which updates it when
//! membership changes are applied or a snapshot is installed), the transport and `RaftNode`.
//!
//! It also remembers which ids were removed from the cluster by a membership change this node
//! applied (or learned from a snapshot). Ids are never reused, so a removal is final: the
//! transport's server refuses such a node's messages with a "removed" status, which is how a
//! node that was cut off while it was removed learns of it.
//!
//! On top of the book sit redirects: a member this node dials at an address the log does not
//! record yet, because the member was seen answering there (see `node::relocation`). They
//! change only where this node sends (`dial_addr`, `to_dial_peers`), never what it persists or
//! tells others (`get`, `to_peers`).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use crate::config::Peers;

/// Shared, cloneable view of the member addresses.
#[derive(Clone, Default)]
pub struct AddressBook {
    inner: Arc<RwLock<Peers>>,
    removed: Arc<RwLock<BTreeSet<u64>>>,
    redirects: Arc<RwLock<Peers>>,
}

impl AddressBook {
    /// A book holding `peers`, with no removed ids and no redirects.
    pub fn new(peers: Peers) -> Self {
        AddressBook {
            inner: Arc::new(RwLock::new(peers)),
            removed: Arc::default(),
            redirects: Arc::default(),
        }
    }

    /// Record that `id` was removed from the cluster by a committed membership change.
    pub fn mark_removed(&self, id: u64) {
        self.removed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
    }

    /// Whether `id` is known to have been removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    /// Every id known to have been removed, ascending (what a snapshot carries).
    pub fn removed(&self) -> Vec<u64> {
        self.removed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Add the removals a snapshot carried (never forgets one: removal is final).
    pub fn extend_removed(&self, ids: &[u64]) {
        self.removed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(ids.iter().copied());
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

    /// Dial member `id` at `addr` from now on, whatever the book says (until `clear_redirect`).
    pub fn set_redirect(&self, id: u64, addr: String) {
        self.redirects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, addr);
    }

    /// Dial `id` at its book address again.
    pub fn clear_redirect(&self, id: u64) {
        self.redirects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Drop the redirects of ids outside `members` and those the book has caught up with.
    pub fn prune_redirects(&self, members: &BTreeSet<u64>) {
        let book = self.to_peers();
        self.redirects
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, addr| members.contains(id) && book.get(id) != Some(addr));
    }

    /// Where to send to `id`: its redirect, else its book address.
    pub fn dial_addr(&self, id: u64) -> Option<String> {
        let redirect = self
            .redirects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        redirect.or_else(|| self.get(id))
    }

    /// The book with the redirects of its members on top: what the senders dial.
    pub fn to_dial_peers(&self) -> Peers {
        let mut book = self.to_peers();
        for (id, addr) in self
            .redirects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(entry) = book.get_mut(id) {
                entry.clone_from(addr);
            }
        }
        book
    }

    /// Forget one member.
    pub fn remove(&self, id: u64) {
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
