//! A backend's live stages (or a stage's live steps) by id: the one map type every
//! backend keeps its state in, shared between the tasks driving its stages.
//!
//! The lock recovers from poisoning (see [`crate::lock`]): a task that panicked
//! while holding it must not take the other stages down with it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::lock::lock;

pub(crate) struct Registry<T> {
    /// What an entry is (`stage`, `step`), for [`Error::NotFound`].
    kind: &'static str,
    entries: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Registry<T> {
    pub(crate) fn new(kind: &'static str) -> Self {
        Registry {
            kind,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Adds (or replaces) the entry `id`.
    pub(crate) fn insert(&self, id: impl Into<String>, value: impl Into<Arc<T>>) {
        lock(&self.entries).insert(id.into(), value.into());
    }

    /// The entry `id`, or [`Error::NotFound`].
    pub(crate) fn get(&self, id: &str) -> Result<Arc<T>> {
        lock(&self.entries)
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound {
                kind: self.kind,
                id: id.to_owned(),
            })
    }

    pub(crate) fn remove(&self, id: &str) -> Option<Arc<T>> {
        lock(&self.entries).remove(id)
    }

    /// Removes and returns every entry.
    pub(crate) fn drain(&self) -> Vec<(String, Arc<T>)> {
        lock(&self.entries).drain().collect()
    }

    /// Every entry, left in place: to work on each without holding the lock.
    pub(crate) fn entries(&self) -> Vec<(String, Arc<T>)> {
        lock(&self.entries)
            .iter()
            .map(|(id, value)| (id.clone(), value.clone()))
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.entries).len()
    }
}

impl<T> fmt::Debug for Registry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("kind", &self.kind)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(mut entries: Vec<(String, Arc<u32>)>) -> Vec<(String, u32)> {
        entries.sort();
        entries.into_iter().map(|(id, v)| (id, *v)).collect()
    }

    #[test]
    fn insert_get_remove() {
        let r = Registry::new("stage");
        assert_eq!(r.len(), 0);
        r.insert("a", 1);
        r.insert(String::from("b"), Arc::new(2));
        assert_eq!(r.len(), 2);
        assert_eq!(*r.get("a").unwrap(), 1);
        r.insert("a", 3);
        assert_eq!(*r.get("a").unwrap(), 3, "insert replaces");
        assert_eq!(r.len(), 2);

        assert_eq!(r.remove("a").as_deref(), Some(&3));
        assert_eq!(r.remove("a"), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_missing_entry_is_not_found_with_its_kind() {
        let r: Registry<u32> = Registry::new("step");
        match r.get("s/0") {
            Err(Error::NotFound { kind, id }) => assert_eq!((kind, id.as_str()), ("step", "s/0")),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }

    #[test]
    fn entries_copies_and_drain_empties() {
        let r = Registry::new("step");
        r.insert("x", 1);
        r.insert("y", 2);
        let expected = vec![("x".to_owned(), 1), ("y".to_owned(), 2)];
        assert_eq!(ids(r.entries()), expected);
        assert_eq!(r.len(), 2, "entries leaves them in place");
        assert_eq!(ids(r.drain()), expected);
        assert_eq!(r.len(), 0);
        assert!(r.drain().is_empty());
    }

    #[test]
    fn keeps_working_after_a_panic_while_locked() {
        let r = Arc::new(Registry::new("stage"));
        r.insert("before", 1);
        let poisoner = Arc::clone(&r);
        let panicked = std::thread::spawn(move || {
            let _guard = poisoner.entries.lock().unwrap();
            panic!("a task panics while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(r.entries.is_poisoned());

        assert_eq!(*r.get("before").unwrap(), 1);
        r.insert("after", 2);
        assert_eq!(r.len(), 2);
        assert_eq!(r.remove("before").as_deref(), Some(&1));
        assert_eq!(ids(r.entries()), vec![("after".to_owned(), 2)]);
        assert_eq!(ids(r.drain()), vec![("after".to_owned(), 2)]);
        assert!(format!("{r:?}").contains("len: 0"));
    }
}
