//! A color's pool: its backends, each with a weight and whether the
//! operator drained it, as the config file, the `up` flags and the state
//! file spell them.

use std::{fmt, net::SocketAddr};

use bluegreen_common::MAX_POOL_BACKENDS;
use serde::{Deserialize, Serialize};

use crate::{endpoint::parse_endpoint, error::Error, load};

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
    type Err = Error;

    fn from_str(input: &str) -> Result<PoolSpec, Error> {
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

/// A pool as the config file may write it: `"addr:port"`, a list of them,
/// or a list of `{ addr = "...", weight = N }` tables (strings and tables
/// may be mixed).
pub(super) fn from_toml(value: &toml::Value) -> Result<PoolSpec, String> {
    let expected = "expected \"ADDR:PORT\", a list of them, or a list of { addr = \"ADDR:PORT\", weight = N } tables";
    let backends = match value {
        toml::Value::String(_) => vec![backend_from_toml(value)?],
        toml::Value::Array(list) => list
            .iter()
            .enumerate()
            .map(|(index, item)| {
                backend_from_toml(item).map_err(|error| format!("backend {}: {error}", index + 1))
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(expected.to_owned()),
    };
    Ok(PoolSpec(backends))
}

fn backend_from_toml(value: &toml::Value) -> Result<BackendSpec, String> {
    let endpoint = |text: &str| parse_endpoint(text).map_err(|error| error.to_string());
    match value {
        toml::Value::String(text) => endpoint(text).map(BackendSpec::new),
        toml::Value::Table(table) => {
            if let Some(unknown) = table
                .keys()
                .find(|key| !matches!(key.as_str(), "addr" | "weight"))
            {
                return Err(format!(
                    "unknown key {unknown:?}: a backend has addr and weight"
                ));
            }
            let addr = match table.get("addr") {
                Some(toml::Value::String(text)) => endpoint(text)?,
                Some(_) => return Err("addr must be a string \"ADDR:PORT\"".to_owned()),
                None => return Err("addr is missing".to_owned()),
            };
            let weight = match table.get("weight") {
                None => default_weight(),
                Some(toml::Value::Integer(weight)) => u32::try_from(*weight)
                    .ok()
                    .filter(|weight| WEIGHTS.contains(weight))
                    .ok_or_else(|| format!("{addr}: weight {weight} is outside 1..=100"))?,
                Some(_) => return Err(format!("{addr}: weight must be a number from 1 to 100")),
            };
            Ok(BackendSpec {
                weight,
                ..BackendSpec::new(addr)
            })
        }
        _ => Err("a backend is \"ADDR:PORT\" or { addr = \"ADDR:PORT\", weight = N }".to_owned()),
    }
}

#[cfg(test)]
mod tests;
