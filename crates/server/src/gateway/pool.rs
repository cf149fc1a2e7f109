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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ReplicaKey {
    pub run_id: Arc<str>,
    pub replica: u32,
}

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
    /// Mirrors `Table::draining`, so that picking needs no look-up.
    draining: bool,
}

struct Run {
    project: String,
    name: String,
    members: Vec<Member>,
}

#[derive(Default)]
struct Service {
    /// Sorted, so that the candidate order (and so round-robin) is stable.
    runs: BTreeSet<Arc<str>>,
    /// Breaks ties between equally loaded endpoints.
    cursor: usize,
}

/// Keyed by project then name, so that a request looks its service up without allocating.
#[derive(Default)]
struct Table {
    services: HashMap<String, HashMap<String, Service>>,
    runs: HashMap<Arc<str>, Run>,
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
        let run_id: Arc<str> = match table.runs.get_key_value(run_id) {
            Some((known, _)) => known.clone(),
            None => Arc::from(run_id),
        };
        // A run backs one service; if it was filed under another one, move it.
        if let Some(run) = table.runs.remove(&run_id) {
            if run.project != project || run.name != name {
                table.detach(&run.project, &run.name, &run_id);
            }
        }
        let mut members: Vec<Member> = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            // The last address given for a replica wins.
            members.retain(|member| member.replica != endpoint.replica);
            let key = ReplicaKey {
                run_id: run_id.clone(),
                replica: endpoint.replica,
            };
            let draining = table.draining.contains(&key);
            let load = table.load_for(key);
            members.push(Member {
                replica: endpoint.replica,
                addr: endpoint.addr,
                load,
                draining,
            });
        }
        members.sort_by_key(|member| member.replica);
        table
            .services
            .entry(project.to_string())
            .or_default()
            .entry(name.to_string())
            .or_default()
            .runs
            .insert(run_id.clone());
        table.runs.insert(
            run_id,
            Run {
                project: project.to_string(),
                name: name.to_string(),
                members,
            },
        );
        table.sweep_loads();
    }

    pub fn remove_run(&self, run_id: &str) {
        let mut table = self.lock();
        if let Some((run_id, run)) = table.runs.remove_entry(run_id) {
            table.detach(&run.project, &run.name, &run_id);
        }
        table.draining.retain(|key| &*key.run_id != run_id);
        table.sweep_loads();
    }

    /// Takes the replica out of rotation and hands back its load, to wait on.
    fn start_drain(&self, key: ReplicaKey) -> Option<Arc<Load>> {
        let mut table = self.lock();
        if let Some(run) = table.runs.get_mut(&key.run_id) {
            for member in &mut run.members {
                if member.replica == key.replica {
                    member.draining = true;
                }
            }
        }
        let load = table.loads.get(&key).and_then(Weak::upgrade);
        table.draining.insert(key);
        load
    }

    pub async fn drain(&self, run_id: &str, replica: u32, timeout: Duration) -> bool {
        let key = ReplicaKey {
            run_id: Arc::from(run_id),
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
        let key = ReplicaKey {
            run_id: Arc::from(run_id),
            replica,
        };
        let table = self.lock();
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
            .get_mut(project)
            .and_then(|services| services.get_mut(name))
        else {
            return Pick::UnknownService;
        };
        let mut in_rotation = 0usize;
        let mut least: Vec<(&Arc<str>, &Member)> = Vec::new();
        let mut least_load = usize::MAX;
        for run_id in &service.runs {
            let Some(run) = table.runs.get(run_id) else {
                continue;
            };
            for member in run.members.iter().filter(|member| !member.draining) {
                in_rotation += 1;
                let was_tried = tried
                    .iter()
                    .any(|key| key.replica == member.replica && key.run_id == *run_id);
                if was_tried {
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
                run_id: run_id.clone(),
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
    fn detach(&mut self, project: &str, name: &str, run_id: &str) {
        let Some(services) = self.services.get_mut(project) else {
            return;
        };
        if let Some(service) = services.get_mut(name) {
            service.runs.remove(run_id);
            if service.runs.is_empty() {
                services.remove(name);
            }
        }
        if services.is_empty() {
            self.services.remove(project);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(replicas: &[u32]) -> Vec<Endpoint> {
        replicas
            .iter()
            .map(|&replica| Endpoint {
                replica,
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + replica as u16)),
            })
            .collect()
    }

    fn picked(pick: Pick) -> (ReplicaKey, InFlight) {
        match pick {
            Pick::Picked { key, guard, .. } => (key, guard),
            Pick::UnknownService => panic!("unknown service"),
            Pick::NoneReady => panic!("none ready"),
            Pick::Exhausted => panic!("exhausted"),
        }
    }

    fn name(key: &ReplicaKey) -> String {
        format!("{}/{}", key.run_id, key.replica)
    }

    #[test]
    fn ties_go_round_robin_and_the_least_loaded_wins() {
        let pool = Pool::default();
        pool.set_endpoints("p", "s", "r", endpoints(&[0, 1, 2]));
        let order: Vec<String> = (0..6)
            .map(|_| name(&picked(pool.pick("p", "s", &[])).0))
            .collect();
        assert_eq!(order, ["r/0", "r/1", "r/2", "r/0", "r/1", "r/2"]);

        let key = |replica| ReplicaKey {
            run_id: Arc::from("r"),
            replica,
        };
        // Two held on r/0 and one on r/1 (forced by marking the others tried).
        let _held = [
            picked(pool.pick("p", "s", &[key(1), key(2)])),
            picked(pool.pick("p", "s", &[key(1), key(2)])),
            picked(pool.pick("p", "s", &[key(0), key(2)])),
        ];
        assert_eq!(pool.in_flight("r", 0), 2);
        let (idle, _guard) = picked(pool.pick("p", "s", &[]));
        assert_eq!(idle, key(2));
        for _ in 0..4 {
            assert_ne!(picked(pool.pick("p", "s", &[])).0, key(0));
        }
    }

    #[test]
    fn a_service_pools_the_endpoints_of_all_its_runs_and_skips_tried_ones() {
        let pool = Pool::default();
        pool.set_endpoints("p", "s", "old", endpoints(&[0]));
        pool.set_endpoints("p", "s", "new", endpoints(&[0]));
        let (first, _a) = picked(pool.pick("p", "s", &[]));
        let (second, _b) = picked(pool.pick("p", "s", &[]));
        assert_ne!(first, second);
        assert!(matches!(
            pool.pick("p", "s", &[first.clone(), second.clone()]),
            Pick::Exhausted
        ));
        let (again, _c) = picked(pool.pick("p", "s", std::slice::from_ref(&first)));
        assert_eq!(again, second);
    }

    #[test]
    fn unknown_empty_and_moved_services() {
        let pool = Pool::default();
        assert!(matches!(pool.pick("p", "s", &[]), Pick::UnknownService));
        pool.set_endpoints("p", "s", "r", vec![]);
        assert!(matches!(pool.pick("p", "s", &[]), Pick::NoneReady));
        pool.set_endpoints("p", "t", "r", endpoints(&[0]));
        assert!(matches!(pool.pick("p", "s", &[]), Pick::UnknownService));
        assert!(matches!(pool.pick("p", "t", &[]), Pick::Picked { .. }));
        pool.remove_run("r");
        assert!(matches!(pool.pick("p", "t", &[]), Pick::UnknownService));
    }

    #[tokio::test]
    async fn draining_is_sticky_until_the_run_is_forgotten() {
        let pool = Pool::default();
        pool.set_endpoints("p", "s", "r", endpoints(&[0, 1]));
        assert!(pool.drain("r", 0, Duration::from_millis(10)).await);
        pool.set_endpoints("p", "s", "r", endpoints(&[0, 1]));
        for _ in 0..4 {
            assert_eq!(picked(pool.pick("p", "s", &[])).0.replica, 1);
        }
        assert!(pool.drain("r", 1, Duration::from_millis(10)).await);
        assert!(matches!(pool.pick("p", "s", &[]), Pick::NoneReady));
        pool.remove_run("r");
        pool.set_endpoints("p", "s", "r", endpoints(&[0, 1]));
        let replicas: HashSet<u32> = (0..4)
            .map(|_| picked(pool.pick("p", "s", &[])).0.replica)
            .collect();
        assert_eq!(replicas.len(), 2);
    }

    #[tokio::test]
    async fn drain_wakes_when_the_last_request_ends() {
        let pool = Arc::new(Pool::default());
        pool.set_endpoints("p", "s", "r", endpoints(&[0]));
        let (_, guard) = picked(pool.pick("p", "s", &[]));
        let (_, second) = picked(pool.pick("p", "s", &[]));
        let drain = tokio::spawn({
            let pool = pool.clone();
            async move { pool.drain("r", 0, Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished());
        drop(second);
        assert!(drain.await.unwrap());
        assert_eq!(pool.in_flight("r", 0), 0);
    }
}
