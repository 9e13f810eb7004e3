//! Live caches by id, for response futures that see a refusal.
//!
//! A response future that will not retry needs its cache only if the server refuses the token,
//! which almost never happens. Holding an `Arc` to the cache for that costs two atomic
//! read-modify-writes per request on a counter every core shares; holding the cache's id costs
//! nothing, and the rare refusal looks the cache up here.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, Weak},
};

use super::state::Shared;

static CACHES: Mutex<BTreeMap<u64, Weak<Shared>>> = Mutex::new(BTreeMap::new());

fn caches() -> MutexGuard<'static, BTreeMap<u64, Weak<Shared>>> {
    // Inserts and removals cannot leave the map inconsistent.
    CACHES.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn register(shared: &Arc<Shared>) {
    caches().insert(shared.id, Arc::downgrade(shared));
}

pub(super) fn unregister(id: u64) {
    caches().remove(&id);
}

/// The live cache with this id. The returned `Arc` is dropped by the caller after the registry
/// lock is released, so a last reference dropped there can unregister without deadlock.
pub(super) fn find(id: u64) -> Option<Arc<Shared>> {
    let weak = caches().get(&id).cloned()?;
    weak.upgrade()
}
