//! The object store: pods and secrets by namespace and name, one global
//! `resourceVersion` counter bumped by every change (as etcd's revision is), and a
//! bounded history of change events that watches replay from a resourceVersion.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::broadcast;

use super::net::HttpRouteObject;
use super::status::ApiError;

/// Namespace and name.
pub type Key = (String, String);

/// Live watchers lagging by more than this many events are ended with 410 Expired
/// (they re-list, as a client must after any watch error).
const LIVE_BUFFER: usize = 4096;

/// The kinds of object the double stores.
pub trait Object:
    k8s_openapi::Resource
    + k8s_openapi::Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + Send
    + Sync
    + 'static
{
    fn table(tables: &Tables) -> &BTreeMap<Key, Self>;
    fn table_mut(tables: &mut Tables) -> &mut BTreeMap<Key, Self>;
    /// Field selector labels the API server supports for this kind, with the JSON
    /// pointer of the value each one compares.
    const FIELDS: &'static [(&'static str, &'static str)];
}

#[derive(Default)]
pub struct Tables {
    pods: BTreeMap<Key, Pod>,
    secrets: BTreeMap<Key, Secret>,
    services: BTreeMap<Key, Service>,
    ingresses: BTreeMap<Key, Ingress>,
    httproutes: BTreeMap<Key, HttpRouteObject>,
    deployments: BTreeMap<Key, Deployment>,
    replicasets: BTreeMap<Key, ReplicaSet>,
    resourcequotas: BTreeMap<Key, ResourceQuota>,
}

/// `impl Object` for a kind stored in `Tables::$field`, selectable by name and
/// namespace (what the API server supports for every kind).
macro_rules! object_by_name {
    ($kind:ty, $field:ident) => {
        impl Object for $kind {
            fn table(t: &Tables) -> &BTreeMap<Key, Self> {
                &t.$field
            }
            fn table_mut(t: &mut Tables) -> &mut BTreeMap<Key, Self> {
                &mut t.$field
            }
            const FIELDS: &'static [(&'static str, &'static str)] = &[
                ("metadata.name", "/metadata/name"),
                ("metadata.namespace", "/metadata/namespace"),
            ];
        }
    };
}

object_by_name!(Service, services);
object_by_name!(Ingress, ingresses);
object_by_name!(HttpRouteObject, httproutes);
object_by_name!(ResourceQuota, resourcequotas);

impl Object for Pod {
    fn table(t: &Tables) -> &BTreeMap<Key, Self> {
        &t.pods
    }
    fn table_mut(t: &mut Tables) -> &mut BTreeMap<Key, Self> {
        &mut t.pods
    }
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
        ("spec.nodeName", "/spec/nodeName"),
        ("spec.restartPolicy", "/spec/restartPolicy"),
        ("spec.serviceAccountName", "/spec/serviceAccountName"),
        ("status.phase", "/status/phase"),
        ("status.podIP", "/status/podIP"),
    ];
}

impl Object for Secret {
    fn table(t: &Tables) -> &BTreeMap<Key, Self> {
        &t.secrets
    }
    fn table_mut(t: &mut Tables) -> &mut BTreeMap<Key, Self> {
        &mut t.secrets
    }
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
        ("type", "/type"),
    ];
}

impl Object for Deployment {
    fn table(t: &Tables) -> &BTreeMap<Key, Self> {
        &t.deployments
    }
    fn table_mut(t: &mut Tables) -> &mut BTreeMap<Key, Self> {
        &mut t.deployments
    }
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
    ];
}

impl Object for ReplicaSet {
    fn table(t: &Tables) -> &BTreeMap<Key, Self> {
        &t.replicasets
    }
    fn table_mut(t: &mut Tables) -> &mut BTreeMap<Key, Self> {
        &mut t.replicasets
    }
    const FIELDS: &'static [(&'static str, &'static str)] = &[
        ("metadata.name", "/metadata/name"),
        ("metadata.namespace", "/metadata/namespace"),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change. `previous` is the object before a modification, so a watch with a
/// selector can turn "no longer matches" into DELETED and "now matches" into ADDED.
#[derive(Debug)]
pub struct Event {
    pub rv: u64,
    /// The resource's plural (`pods`).
    pub resource: &'static str,
    pub namespace: String,
    pub kind: EventType,
    pub previous: Option<Value>,
    pub object: Value,
}

struct Inner {
    rv: u64,
    tables: Tables,
    history: VecDeque<Arc<Event>>,
    history_cap: usize,
}

pub struct Store {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Event>>,
}

/// A consistent starting point for a watch: the objects or events to send first,
/// then everything after from `live`.
pub struct WatchStart {
    pub replay: Vec<Arc<Event>>,
    pub live: broadcast::Receiver<Arc<Event>>,
    pub rv: u64,
}

pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn to_value<K: Serialize>(obj: &K) -> Value {
    serde_json::to_value(obj).expect("k8s-openapi objects always serialize")
}

impl Store {
    pub fn new(history_cap: usize) -> Store {
        Store {
            inner: Mutex::new(Inner {
                rv: 0,
                tables: Tables::default(),
                history: VecDeque::new(),
                history_cap: history_cap.max(1),
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is
        // applied in one step), so poisoning is not a reason to fail every request.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, inner: &mut Inner, event: Event) {
        let event = Arc::new(event);
        if inner.history.len() == inner.history_cap {
            inner.history.pop_front();
        }
        inner.history.push_back(event.clone());
        // No receivers is fine.
        let _ = self.live.send(event);
    }

    /// Stores a new object: assigns uid, creationTimestamp and resourceVersion.
    /// `generateName` is honoured when the name is empty.
    pub fn create<K: Object>(&self, namespace: &str, mut obj: K) -> Result<K, ApiError> {
        let mut inner = self.lock();
        let meta = obj.metadata_mut();
        let name = match meta.name.clone().filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => {
                let prefix = meta.generate_name.clone().unwrap_or_default();
                loop {
                    let candidate = format!("{prefix}{}", random_suffix());
                    if !K::table(&inner.tables)
                        .contains_key(&(namespace.to_owned(), candidate.clone()))
                    {
                        break candidate;
                    }
                }
            }
        };
        let key = (namespace.to_owned(), name.clone());
        if K::table(&inner.tables).contains_key(&key) {
            return Err(ApiError::already_exists(K::URL_PATH_SEGMENT, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        let meta = obj.metadata_mut();
        meta.name = Some(name);
        meta.namespace = Some(namespace.to_owned());
        meta.uid = Some(new_uid());
        meta.resource_version = Some(rv.to_string());
        meta.creation_timestamp = Some(now());
        meta.generation = Some(1);
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        K::table_mut(&mut inner.tables).insert(key, obj.clone());
        let event = Event {
            rv,
            resource: K::URL_PATH_SEGMENT,
            namespace: namespace.to_owned(),
            kind: EventType::Added,
            previous: None,
            object: to_value(&obj),
        };
        self.emit(&mut inner, event);
        Ok(obj)
    }

    pub fn get<K: Object>(&self, namespace: &str, name: &str) -> Option<K> {
        K::table(&self.lock().tables)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// All objects of a kind in `namespace` (all namespaces for `None`) and the
    /// resourceVersion the list is consistent with.
    pub fn list<K: Object>(&self, namespace: Option<&str>) -> (Vec<K>, u64) {
        let inner = self.lock();
        let items = K::table(&inner.tables)
            .iter()
            .filter(|((ns, _), _)| namespace.is_none_or(|want| want == ns))
            .map(|(_, o)| o.clone())
            .collect();
        (items, inner.rv)
    }

    /// Changes an object in place. A change that leaves the object as it was is not
    /// a change: no new resourceVersion, no event (as on a real API server).
    /// Returns the stored object, or `None` if it does not exist.
    pub fn update<K: Object>(
        &self,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut K),
    ) -> Option<K> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let current = K::table(&inner.tables).get(&key)?.clone();
        let mut next = current.clone();
        change(&mut next);
        let before = to_value(&current);
        if to_value(&next) == before {
            return Some(current);
        }
        inner.rv += 1;
        let rv = inner.rv;
        next.metadata_mut().resource_version = Some(rv.to_string());
        K::table_mut(&mut inner.tables).insert(key, next.clone());
        let event = Event {
            rv,
            resource: K::URL_PATH_SEGMENT,
            namespace: namespace.to_owned(),
            kind: EventType::Modified,
            previous: Some(before),
            object: to_value(&next),
        };
        self.emit(&mut inner, event);
        Some(next)
    }

    /// Removes an object; the DELETED event carries its last state with a new
    /// resourceVersion.
    pub fn remove<K: Object>(&self, namespace: &str, name: &str) -> Option<K> {
        let mut inner = self.lock();
        let key = (namespace.to_owned(), name.to_owned());
        let mut obj = K::table_mut(&mut inner.tables).remove(&key)?;
        inner.rv += 1;
        let rv = inner.rv;
        obj.metadata_mut().resource_version = Some(rv.to_string());
        let event = Event {
            rv,
            resource: K::URL_PATH_SEGMENT,
            namespace: namespace.to_owned(),
            kind: EventType::Deleted,
            previous: None,
            object: to_value(&obj),
        };
        self.emit(&mut inner, event);
        Some(obj)
    }

    /// Where a watch starts. `since = None` (resourceVersion unset or "0"): the
    /// current objects as synthetic ADDED events, then what follows. `Some(rv)`:
    /// every retained event after `rv`; 410 if events after `rv` were dropped from
    /// the bounded history.
    pub fn watch<K: Object>(&self, since: Option<u64>) -> Result<WatchStart, ApiError> {
        let inner = self.lock();
        // Subscribing under the lock: no event can fall between replay and live.
        let live = self.live.subscribe();
        let replay = match since {
            None => K::table(&inner.tables)
                .iter()
                .map(|((ns, _), obj)| {
                    Arc::new(Event {
                        rv: inner.rv,
                        resource: K::URL_PATH_SEGMENT,
                        namespace: ns.clone(),
                        kind: EventType::Added,
                        previous: None,
                        object: to_value(obj),
                    })
                })
                .collect(),
            Some(since) => {
                let oldest_kept = inner.history.front().map(|e| e.rv).unwrap_or(inner.rv + 1);
                // Events since+1 ..= rv must all be retained.
                if since < inner.rv && since + 1 < oldest_kept {
                    return Err(ApiError::expired(since, oldest_kept));
                }
                inner
                    .history
                    .iter()
                    .filter(|e| e.rv > since && e.resource == K::URL_PATH_SEGMENT)
                    .cloned()
                    .collect()
            }
        };
        Ok(WatchStart {
            replay,
            live,
            rv: inner.rv,
        })
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    /// Whether the owner an ownerReference names (by kind and uid) exists; `None`
    /// for a kind the double does not store (garbage collection then keeps the
    /// dependent: it cannot tell).
    pub fn owner_exists(&self, kind: &str, uid: &str) -> Option<bool> {
        fn has<K: Object>(t: &Tables, uid: &str) -> bool {
            K::table(t)
                .values()
                .any(|o| o.metadata().uid.as_deref() == Some(uid))
        }
        let inner = self.lock();
        let t = &inner.tables;
        Some(match kind {
            "Pod" => has::<Pod>(t, uid),
            "Secret" => has::<Secret>(t, uid),
            "Service" => has::<Service>(t, uid),
            "Ingress" => has::<Ingress>(t, uid),
            "HTTPRoute" => has::<HttpRouteObject>(t, uid),
            "Deployment" => has::<Deployment>(t, uid),
            "ReplicaSet" => has::<ReplicaSet>(t, uid),
            _ => return None,
        })
    }
}

/// A random RFC 4122 version-4 UUID, as the API server assigns.
fn new_uid() -> String {
    let b: [u8; 16] = rand::random();
    let hex: String = b
        .iter()
        .enumerate()
        .map(|(i, byte)| match i {
            6 => format!("{:02x}", (byte & 0x0f) | 0x40),
            8 => format!("{:02x}", (byte & 0x3f) | 0x80),
            _ => format!("{byte:02x}"),
        })
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Five characters from the alphabet the API server uses for `generateName`.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn versions_increase_per_change_and_history_expires() {
        let store = Store::new(2);
        let a = store.create("ns", pod("a")).unwrap();
        assert_eq!(a.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(
            store.create("ns", pod("a")).unwrap_err().reason,
            "AlreadyExists"
        );
        let same = store.update::<Pod>("ns", "a", |_| {}).unwrap();
        assert_eq!(same.metadata.resource_version.as_deref(), Some("1"));
        let changed = store
            .update::<Pod>("ns", "a", |p| {
                p.metadata.labels = Some([("k".into(), "v".into())].into())
            })
            .unwrap();
        assert_eq!(changed.metadata.resource_version.as_deref(), Some("2"));
        store.remove::<Pod>("ns", "a").unwrap();
        assert_eq!(store.resource_version(), 3);
        // History holds events 2 and 3: from 1 on is complete, from 0 is not.
        let replay = store.watch::<Pod>(Some(1)).unwrap().replay;
        assert_eq!(replay.iter().map(|e| e.rv).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(store.watch::<Pod>(Some(0)).err().unwrap().code, 410);
        assert!(store.watch::<Pod>(Some(3)).unwrap().replay.is_empty());
    }

    #[test]
    fn uids_look_like_uuids() {
        let uid = new_uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
    }
}
