//! The routing table: which runs back which service, their endpoints, which replicas are
//! draining, and how many requests are in flight on each replica.
//!
//! One mutex guards the table; picking an endpoint and counting the request on it happen under
//! it, so that concurrent requests see each other's load. The in-flight counters themselves are
//! atomics shared with the requests ([`InFlight`]), which end without taking the lock.

use super::Endpoint;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// A replica of one run: `(run id, replica index)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ReplicaKey {
    pub run_id: String,
    pub replica: u32,
}

type ServiceKey = (String, String);

/// The load of one replica. Outlives the replica's place in the rotation as long as a request
/// holds it, so that a replica taken out still reports (and drains) what runs on it.
#[derive(Default)]
struct Load {
    in_flight: AtomicUsize,
    idle: Notify,
}

struct Member {
    replica: u32,
    addr: SocketAddr,
    load: Arc<Load>,
}

struct Run {
    service: ServiceKey,
    members: Vec<Member>,
}

#[derive(Default)]
struct Service {
    /// Sorted, so that the candidate order (and so round-robin) is stable.
    runs: BTreeSet<String>,
    /// Breaks ties between equally loaded endpoints.
    cursor: usize,
}

#[derive(Default)]
struct Table {
    services: HashMap<ServiceKey, Service>,
    runs: HashMap<String, Run>,
    /// Replicas taken out by `drain`; only forgetting the run clears them.
    draining: HashSet<ReplicaKey>,
    /// Every replica whose load is still referenced (by the rotation or by a request).
    loads: HashMap<ReplicaKey, Weak<Load>>,
}

/// What picking an endpoint for a service found.
pub(crate) enum Pick {
    /// No run is known for the service.
    UnknownService,
    /// Runs are known, but none has an endpoint in rotation.
    NoneReady,
    /// Every endpoint in rotation was already tried by this request.
    Exhausted,
    Picked {
        key: ReplicaKey,
        addr: SocketAddr,
        guard: InFlight,
    },
}

/// Counts one request on a replica until dropped.
pub(crate) struct InFlight {
    load: Arc<Load>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.load.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.load.idle.notify_waiters();
        }
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    table: Mutex<Table>,
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves a table that is still consistent (every update
        // is a few assignments), so keep serving rather than poison every later request.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_endpoints(&self, project: &str, name: &str, run_id: &str, endpoints: Vec<Endpoint>) {
        let mut table = self.lock();
        let service: ServiceKey = (project.to_string(), name.to_string());
        // A run backs one service; if it was filed under another one, move it.
        if let Some(previous) = table.runs.get(run_id).map(|run| run.service.clone()) {
            if previous != service {
                table.detach(&previous, run_id);
            }
        }
        let mut members: Vec<Member> = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            // The last address given for a replica wins.
            members.retain(|member| member.replica != endpoint.replica);
            let key = ReplicaKey {
                run_id: run_id.to_string(),
                replica: endpoint.replica,
            };
            let load = table.load_for(key);
            members.push(Member {
                replica: endpoint.replica,
                addr: endpoint.addr,
                load,
            });
        }
        members.sort_by_key(|member| member.replica);
        table
            .services
            .entry(service.clone())
            .or_default()
            .runs
            .insert(run_id.to_string());
        table
            .runs
            .insert(run_id.to_string(), Run { service, members });
        table.sweep_loads();
    }

    pub fn remove_run(&self, run_id: &str) {
        let mut table = self.lock();
        if let Some(run) = table.runs.remove(run_id) {
            table.detach(&run.service, run_id);
        }
        table.draining.retain(|key| key.run_id != run_id);
        table.sweep_loads();
    }

    /// Takes the replica out of rotation and hands back its load, to wait on.
    fn start_drain(&self, key: ReplicaKey) -> Option<Arc<Load>> {
        let mut table = self.lock();
        let load = table.loads.get(&key).and_then(Weak::upgrade);
        table.draining.insert(key);
        load
    }

    pub async fn drain(&self, run_id: &str, replica: u32, timeout: Duration) -> bool {
        let key = ReplicaKey {
            run_id: run_id.to_string(),
            replica,
        };
        let Some(load) = self.start_drain(key) else {
            // No request holds it and it is in no rotation: nothing can be in flight.
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the wake-up before reading the counter, so that the last request
            // ending in between is not missed.
            let idle = load.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if load.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return load.in_flight.load(Ordering::Acquire) == 0;
            }
        }
    }

    pub fn in_flight(&self, run_id: &str, replica: u32) -> usize {
        let table = self.lock();
        let key = ReplicaKey {
            run_id: run_id.to_string(),
            replica,
        };
        table
            .loads
            .get(&key)
            .and_then(Weak::upgrade)
            .map_or(0, |load| load.in_flight.load(Ordering::Acquire))
    }

    /// Picks the least loaded endpoint of the service not in `tried`, ties broken round-robin,
    /// and counts the request on it.
    pub fn pick(&self, project: &str, name: &str, tried: &[ReplicaKey]) -> Pick {
        let mut table = self.lock();
        let table = &mut *table;
        let Some(service) = table
            .services
            .get_mut(&(project.to_string(), name.to_string()))
        else {
            return Pick::UnknownService;
        };
        // (run id, member) of every endpoint in rotation, in a stable order.
        let mut in_rotation = 0usize;
        let mut least: Vec<(&str, &Member)> = Vec::new();
        let mut least_load = usize::MAX;
        for run_id in &service.runs {
            let Some(run) = table.runs.get(run_id) else {
                continue;
            };
            for member in &run.members {
                let key = ReplicaKey {
                    run_id: run_id.clone(),
                    replica: member.replica,
                };
                if table.draining.contains(&key) {
                    continue;
                }
                in_rotation += 1;
                if tried.contains(&key) {
                    continue;
                }
                let load = member.load.in_flight.load(Ordering::Acquire);
                if load < least_load {
                    least_load = load;
                    least.clear();
                }
                if load == least_load {
                    least.push((run_id, member));
                }
            }
        }
        if in_rotation == 0 {
            return Pick::NoneReady;
        }
        if least.is_empty() {
            return Pick::Exhausted;
        }
        let (run_id, member) = least[service.cursor % least.len()];
        service.cursor = service.cursor.wrapping_add(1);
        member.load.in_flight.fetch_add(1, Ordering::AcqRel);
        Pick::Picked {
            key: ReplicaKey {
                run_id: run_id.to_string(),
                replica: member.replica,
            },
            addr: member.addr,
            guard: InFlight {
                load: member.load.clone(),
            },
        }
    }
}

impl Table {
    fn detach(&mut self, service: &ServiceKey, run_id: &str) {
        if let Some(entry) = self.services.get_mut(service) {
            entry.runs.remove(run_id);
            if entry.runs.is_empty() {
                self.services.remove(service);
            }
        }
    }

    /// The load of a replica: the one requests in flight on it still hold, else a new one.
    fn load_for(&mut self, key: ReplicaKey) -> Arc<Load> {
        if let Some(load) = self.loads.get(&key).and_then(Weak::upgrade) {
            return load;
        }
        let load = Arc::new(Load::default());
        self.loads.insert(key, Arc::downgrade(&load));
        load
    }

    fn sweep_loads(&mut self) {
        self.loads.retain(|_, load| load.strong_count() > 0);
    }
}
