//! A color's pool as bluegreen holds it: its backends, each with the
//! operator's weight and drain and the daemon's runtime state (health,
//! load), what the table is built from ([`PoolSpec::weighted`]) and what
//! the maps record of each backend ([`PoolSpec::wire`]).

use std::{fmt, net::SocketAddr};

use bluegreen_common::{
    BACKEND_DRAINED, BACKEND_LOADED, BACKEND_RECORDED, BACKEND_UNHEALTHY, MAX_POOL_BACKENDS,
};
use serde::{Deserialize, Serialize};

use crate::{
    endpoint::{AddressError, parse_endpoint},
    load,
};

/// Weights a backend can be given; a drained backend has weight 0 in the
/// dataplane but keeps its configured weight for when it comes back.
pub const WEIGHTS: std::ops::RangeInclusive<u32> = 1..=100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendSpec {
    pub addr: SocketAddr,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Runtime state set by `backend drain`: no new flows, established
    /// ones continue.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drained: bool,
    /// Runtime state set by the daemon: it failed its health checks, so it
    /// gets no new flows (established ones continue) until it passes
    /// again. Kept apart from `drained` and the weight, which are the
    /// operator's, and in the state file so that a `backend` command,
    /// which rebuilds the table from this file, keeps it out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unhealthy: bool,
    /// Runtime state set by the daemon from the backend's queue depth
    /// (`[service.load]`): its table weight in units of
    /// 1/[`load::SCALE`] of the operator's weight, never the weight
    /// itself, which stays the operator's. Kept in the state file so that
    /// a `backend` command keeps the split until the daemon's next scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_weight: Option<u32>,
    /// Runtime state set by the daemon: its last scrape of the backend's
    /// load failed, so `load_weight` is the last one it could read. In the
    /// state file so that `status` shows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub load_unreadable: bool,
}

fn default_weight() -> u32 {
    1
}

impl BackendSpec {
    pub fn new(addr: SocketAddr) -> BackendSpec {
        BackendSpec {
            addr,
            weight: default_weight(),
            drained: false,
            unhealthy: false,
            load_weight: None,
            load_unreadable: false,
        }
    }

    /// What `BG_BACKENDS` records of the backend beside its address (see
    /// `PoolBackend`): its flags and the operator's weight.
    pub fn wire_record(&self) -> [u8; 2] {
        let flag = |set: bool, flag: u8| if set { flag } else { 0 };
        let flags = BACKEND_RECORDED
            | flag(self.drained, BACKEND_DRAINED)
            | flag(self.unhealthy, BACKEND_UNHEALTHY)
            | flag(self.load_weight.is_some(), BACKEND_LOADED);
        // Validation holds weights to 1..=100.
        [flags, self.weight.min(u32::from(u8::MAX)) as u8]
    }

    /// The backend as `BG_BACKENDS` records it, over what `known` (the
    /// state file) says of it: the maps' weight and flags win, since they
    /// are what the table was built from; the load weight (the table holds
    /// only its share) and whether it could be read stay `known`'s.
    /// `None` for a record of an older writer, which records nothing.
    pub fn from_wire_record(
        addr: SocketAddr,
        record: [u8; 2],
        known: Option<&BackendSpec>,
    ) -> Option<BackendSpec> {
        let [flags, weight] = record;
        if flags & BACKEND_RECORDED == 0 {
            return None;
        }
        let loaded = flags & BACKEND_LOADED != 0;
        Some(BackendSpec {
            addr,
            weight: u32::from(weight),
            drained: flags & BACKEND_DRAINED != 0,
            unhealthy: flags & BACKEND_UNHEALTHY != 0,
            load_weight: known.and_then(|known| known.load_weight).filter(|_| loaded),
            load_unreadable: loaded && known.is_some_and(|known| known.load_unreadable),
        })
    }

    /// The weight the lookup table is built with: the operator's, 0 while
    /// drained or unhealthy.
    pub fn effective_weight(&self) -> u32 {
        if self.drained || self.unhealthy {
            0
        } else {
            self.weight
        }
    }
}

/// One color's backends, in pool order (the order of `BG_BACKENDS`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredPool", into = "Vec<BackendSpec>")]
pub struct PoolSpec(Vec<BackendSpec>);

/// State files from before pools hold one address per color: they must
/// still load.
#[derive(Deserialize)]
#[serde(untagged)]
enum StoredPool {
    One(SocketAddr),
    Many(Vec<BackendSpec>),
}

impl From<StoredPool> for PoolSpec {
    fn from(stored: StoredPool) -> PoolSpec {
        match stored {
            StoredPool::One(addr) => PoolSpec::one(addr),
            StoredPool::Many(backends) => PoolSpec(backends),
        }
    }
}

impl From<PoolSpec> for Vec<BackendSpec> {
    fn from(pool: PoolSpec) -> Vec<BackendSpec> {
        pool.0
    }
}

impl PoolSpec {
    pub fn one(addr: SocketAddr) -> PoolSpec {
        PoolSpec(vec![BackendSpec::new(addr)])
    }

    /// Unchecked: [`super::ServiceSpec::validate`] holds pools to the rules.
    pub fn new(backends: Vec<BackendSpec>) -> PoolSpec {
        PoolSpec(backends)
    }

    pub fn backends(&self) -> &[BackendSpec] {
        &self.0
    }

    pub fn backends_mut(&mut self) -> &mut Vec<BackendSpec> {
        &mut self.0
    }

    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.0.iter().map(|backend| backend.addr)
    }

    pub fn get(&self, addr: SocketAddr) -> Option<&BackendSpec> {
        self.0.iter().find(|backend| backend.addr == addr)
    }

    /// The first backend: the one `status --json` reports as `backend`.
    pub fn first(&self) -> SocketAddr {
        self.0[0].addr
    }

    /// Backends and their weights as the lookup table is built (drained or
    /// unhealthy: weight 0). Once the daemon set a load weight on any
    /// backend, every weight is in load units, so a backend it has not
    /// scraped yet (just added) keeps its full share beside them.
    pub fn weighted(&self) -> Vec<(SocketAddr, u32)> {
        let loaded = self.0.iter().any(|backend| backend.load_weight.is_some());
        self.0
            .iter()
            .map(|backend| {
                let weight = match (backend.effective_weight(), backend.load_weight) {
                    (0, _) => 0,
                    (_, Some(load_weight)) => load_weight,
                    (weight, None) if loaded => weight * load::SCALE,
                    (weight, None) => weight,
                };
                (backend.addr, weight)
            })
            .collect()
    }

    /// The pool with each backend's load weight set to what `load_weight`
    /// gives it (`None`: its operator weight alone), and marked unreadable
    /// if `unreadable` says its load could not be read.
    pub fn with_load(
        &self,
        load_weight: impl Fn(&BackendSpec) -> Option<u32>,
        unreadable: impl Fn(&BackendSpec) -> bool,
    ) -> PoolSpec {
        let mut pool = self.clone();
        for backend in &mut pool.0 {
            backend.load_weight = load_weight(backend);
            backend.load_unreadable = unreadable(backend);
        }
        pool
    }

    /// Backends that take new flows.
    pub fn serving(&self) -> Vec<SocketAddr> {
        self.0
            .iter()
            .filter(|backend| !backend.drained)
            .map(|backend| backend.addr)
            .collect()
    }

    /// The pool as the live dataplane holds it (`addrs`, in pool order),
    /// with weights and drained flags of the backends this pool knows.
    pub fn aligned(&self, addrs: &[SocketAddr]) -> PoolSpec {
        PoolSpec(
            addrs
                .iter()
                .map(|&addr| self.get(addr).copied().unwrap_or(BackendSpec::new(addr)))
                .collect(),
        )
    }

    /// The pool as the dataplane holds it: each backend's table weight and
    /// record. Two pools equal here need no write.
    pub fn wire(&self) -> Vec<(SocketAddr, u32, [u8; 2])> {
        self.weighted()
            .into_iter()
            .zip(&self.0)
            .map(|((addr, weight), backend)| (addr, weight, backend.wire_record()))
            .collect()
    }

    /// Whether any backend takes new flows.
    pub fn takes_new_flows(&self) -> bool {
        self.0.iter().any(|backend| backend.effective_weight() > 0)
    }

    /// Marks drained (and unhealthy, and load-weighted) the backends
    /// `earlier` had marked so.
    pub fn keep_runtime_state(&mut self, earlier: &PoolSpec) {
        for backend in &mut self.0 {
            let known = earlier.get(backend.addr);
            backend.drained = known.is_some_and(|known| known.drained);
            backend.unhealthy = known.is_some_and(|known| known.unhealthy);
            backend.load_weight = known.and_then(|known| known.load_weight);
            backend.load_unreadable = known.is_some_and(|known| known.load_unreadable);
        }
    }

    /// The pool with exactly the backends `unhealthy` says excluded for
    /// their health. Health alone never takes a color's last backend for
    /// new flows away: when the exclusions would leave none, the pool
    /// stays as it is, or, if it already has none (the operator drained
    /// the last healthy one), every exclusion is lifted. The color's own
    /// health (`min_healthy`) then refuses switches to it and rolls it
    /// back.
    pub fn with_health(&self, unhealthy: impl Fn(&BackendSpec) -> bool) -> PoolSpec {
        let mark = |excluded: &dyn Fn(&BackendSpec) -> bool| {
            let mut pool = self.clone();
            for backend in &mut pool.0 {
                backend.unhealthy = excluded(backend);
            }
            pool
        };
        let wanted = mark(&unhealthy);
        if wanted.takes_new_flows() {
            wanted
        } else if self.takes_new_flows() {
            self.clone()
        } else {
            mark(&|_| false)
        }
    }

    /// Why the pool's shape is wrong (empty, too large, a duplicate, a
    /// weight out of range); the backends' addresses are checked apart.
    pub fn check_shape(&self) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("an empty pool: give at least one backend".to_owned());
        }
        if self.0.len() > MAX_POOL_BACKENDS as usize {
            return Err(format!(
                "{} backends, at most {MAX_POOL_BACKENDS}",
                self.0.len()
            ));
        }
        for (index, backend) in self.0.iter().enumerate() {
            if !WEIGHTS.contains(&backend.weight) {
                return Err(format!(
                    "{}: weight {} is outside 1..=100 (drain a backend with `bluegreen backend drain`)",
                    backend.addr, backend.weight
                ));
            }
            if self.0[..index]
                .iter()
                .any(|other| other.addr == backend.addr)
            {
                return Err(format!("{} is listed twice", backend.addr));
            }
        }
        Ok(())
    }
}

/// `ADDR:PORT[,ADDR:PORT...]`, as `up --blue` takes it.
impl std::str::FromStr for PoolSpec {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<PoolSpec, AddressError> {
        input
            .split(',')
            .map(|one| parse_endpoint(one.trim()).map(BackendSpec::new))
            .collect::<Result<_, _>>()
            .map(PoolSpec)
    }
}

/// `10.0.0.2:80, 10.0.0.3:80 (weight 3), 10.0.0.4:80 (drained)`.
impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, backend) in self.0.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", backend.addr)?;
            match (backend.drained, backend.weight) {
                (true, _) => f.write_str(" (drained)")?,
                (false, 1) => {}
                (false, weight) => write!(f, " (weight {weight})")?,
            }
            if backend.unhealthy {
                f.write_str(" (unhealthy)")?;
            }
            if let Some(load_weight) = backend.load_weight {
                write!(f, " (load weight {load_weight}/{})", load::SCALE)?;
            }
            if backend.load_unreadable {
                f.write_str(" (load unreadable)")?;
            }
        }
        Ok(())
    }
}

/// A backend of `weight` at `addr` (a literal), for tests.
#[cfg(test)]
pub(crate) fn test_backend(addr: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        weight,
        ..BackendSpec::new(addr.parse().expect("literal"))
    }
}
