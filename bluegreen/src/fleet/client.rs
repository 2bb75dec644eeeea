//! etcd, as the fleet uses it: reading and compare-and-swapping desired
//! states, the change marker that keeps two operators apart, and the
//! daemons' leased host records.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, LeaseKeepAliveStream,
    LeaseKeeper, PutOptions, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchOptions, WatchStream,
};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::{Conflict, DesiredState, HostRecord, Hosts, Keys, read_desired, read_document, tls};
use crate::{
    config::FleetTls,
    error::{Error, Result},
};

/// How long a connection attempt and one request may take: an unreachable
/// etcd must fail a command (or a daemon's session) quickly, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on idle connections, so that a watch on a dead etcd ends
/// within seconds instead of waiting for TCP to give up.
const PING_INTERVAL: Duration = Duration::from_secs(1);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a daemon looks again at a host name another lease holds.
const REGISTER_POLL: Duration = Duration::from_millis(250);
const REGISTER_ATTEMPTS: usize = 3;
/// How long `fleet status` shows a refused claim of a host name after the
/// last attempt.
const CONFLICT_TTL_SECS: i64 = 300;

/// A connection to the fleet's etcd.
pub struct FleetClient {
    client: Client,
    pub keys: Keys,
}

/// A `fleet switch` or `rollback` in progress: its marker key lives under
/// this lease, kept alive until [`FleetClient::end_change`] (or, if the
/// command dies, for one TTL more).
pub struct Change {
    pub service: String,
    lease: i64,
    /// The revision of the desired state this change last wrote.
    pub revision: i64,
    /// Renews the marker's lease; `None` if renewing could not start (the
    /// marker then expires with its lease, which only lets another change
    /// start sooner).
    keeper: Option<JoinHandle<()>>,
}

impl Drop for Change {
    fn drop(&mut self) {
        if let Some(keeper) = &self.keeper {
            keeper.abort();
        }
    }
}

fn encode(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("fleet documents serialise")
}

/// A desired state read from etcd, or why it cannot be applied.
pub type Desired = std::result::Result<DesiredState, String>;

fn key_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}

/// Whether a host record is free for the daemon whose lease before this
/// one was `previous`.
fn is_ours(kv: &KeyValue, previous: Option<i64>) -> bool {
    kv.lease() == 0 || Some(kv.lease()) == previous
}

fn taken(host: &str, kv: &KeyValue) -> Error {
    let owner = read_document::<HostRecord>(kv.value())
        .map(|held| held.owner)
        .unwrap_or_else(|reason| format!("a record this bluegreen cannot read: {reason}"));
    Error::FleetHostTaken {
        host: host.to_owned(),
        lease: kv.lease(),
        owner,
    }
}

/// The name at the end of a key below `dir`.
fn name_below<'a>(kv: &'a KeyValue, dir: &str) -> Option<&'a str> {
    kv.key_str().ok()?.strip_prefix(dir)
}

impl FleetClient {
    /// Connects to the first of `endpoints` that answers. Over TLS, the
    /// files are checked first and one request is made at once, so that a
    /// TLS problem is named here rather than as a failed request later.
    pub async fn connect(endpoints: &[String], prefix: &str, tls: &FleetTls) -> Result<Self> {
        let tls = tls::load(tls)?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if let Some(tls) = &tls {
            options = options.with_tls(tls.options.clone());
        }
        let explain = |error| match &tls {
            Some(tls) => tls.explain(error),
            None => error,
        };
        let action = format!("cannot connect to etcd at {}", endpoints.join(","));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|error| explain(Error::etcd(action.as_str())(error)))?;
        let mut connected = FleetClient {
            client,
            keys: Keys::new(prefix),
        };
        if tls.is_some() {
            let services = connected.keys.services();
            connected
                .client
                .get(
                    services.as_str(),
                    Some(
                        GetOptions::new()
                            .with_prefix()
                            .with_keys_only()
                            .with_limit(1),
                    ),
                )
                .await
                .map_err(|error| explain(Error::etcd(action.as_str())(error)))?;
        }
        Ok(connected)
    }

    async fn get_prefix(&mut self, dir: &str) -> Result<(Vec<KeyValue>, i64)> {
        let mut response = self
            .client
            .get(dir, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(Error::etcd(format!("cannot read {dir} from etcd")))?;
        let revision = response.header().map_or(0, |header| header.revision());
        Ok((response.take_kvs(), revision))
    }

    /// A service's desired state (or why it cannot be read) and its
    /// revision; `None` before the first fleet change.
    pub async fn desired(&mut self, service: &str) -> Result<Option<(Desired, i64)>> {
        let key = self.keys.service(service);
        let response = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(Error::etcd(format!("cannot read {key} from etcd")))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (read_desired(kv.value()), kv.mod_revision())))
    }

    /// Every service's desired state (or why it cannot be read) with its
    /// revision, and the revision of the read (a watch from the next one
    /// misses nothing).
    pub async fn list_desired(&mut self) -> Result<(BTreeMap<String, (Desired, i64)>, i64)> {
        let dir = self.keys.services();
        let (kvs, revision) = self.get_prefix(&dir).await?;
        let services = kvs
            .iter()
            .filter_map(|kv| {
                let name = name_below(kv, &dir)?;
                Some((
                    name.to_owned(),
                    (read_desired(kv.value()), kv.mod_revision()),
                ))
            })
            .collect();
        Ok((services, revision))
    }

    /// Runs `txn`, which writes `key` (named in the error).
    async fn write(&mut self, key: &str, txn: Txn) -> Result<TxnResponse> {
        self.client
            .txn(txn)
            .await
            .map_err(Error::etcd(format!("cannot write {key} to etcd")))
    }

    /// The live hosts' records (a host whose lease expired has none), and
    /// the records that are not a live host's.
    pub async fn hosts(&mut self) -> Result<Hosts> {
        let dir = self.keys.hosts();
        let (kvs, _) = self.get_prefix(&dir).await?;
        let mut hosts = Hosts::default();
        for kv in &kvs {
            if let Some(name) = name_below(kv, &dir) {
                hosts.add(&key_of(kv), name, kv.lease(), kv.value());
            }
        }
        Ok(hosts)
    }

    /// The daemons that refused to start over a host name another held:
    /// each report, or why it cannot be read.
    pub async fn conflicts(&mut self) -> Result<Vec<(String, Result<Conflict, String>)>> {
        let (kvs, _) = self.get_prefix(&self.keys.conflicts()).await?;
        Ok(kvs
            .iter()
            .map(|kv| (key_of(kv), read_document(kv.value())))
            .collect())
    }

    /// The changes in progress: service -> who runs it.
    pub async fn changes(&mut self) -> Result<BTreeMap<String, String>> {
        let dir = self.keys.changes();
        let (kvs, _) = self.get_prefix(&dir).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| {
                let holder = String::from_utf8_lossy(kv.value()).into_owned();
                Some((name_below(kv, &dir)?.to_owned(), holder))
            })
            .collect())
    }

    /// Writes `desired` for `service` in one transaction that also takes the
    /// service's change marker, provided that the desired state is still at
    /// `read_revision` (0: absent) and no other change holds the marker.
    pub async fn begin_change(
        &mut self,
        service: &str,
        read_revision: i64,
        desired: &DesiredState,
        holder: &str,
        ttl_secs: i64,
    ) -> Result<Change> {
        let lease = self
            .client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(Error::etcd("cannot take an etcd lease for the change"))?
            .id();
        let (key, marker) = (self.keys.service(service), self.keys.change(service));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.as_str(), CompareOp::Equal, read_revision),
                Compare::create_revision(marker.as_str(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(key.as_str(), encode(desired), None),
                TxnOp::put(
                    marker.as_str(),
                    holder,
                    Some(PutOptions::new().with_lease(lease)),
                ),
            ]);
        let response = self.write(&key, txn).await?;
        if !response.succeeded() {
            let _ = self.client.lease_revoke(lease).await;
            let changes = self.changes().await?;
            return Err(match changes.get(service) {
                Some(holder) => Error::FleetBusy {
                    service: service.to_owned(),
                    holder: holder.clone(),
                },
                None => Error::FleetRaced {
                    service: service.to_owned(),
                },
            });
        }
        let revision = response.header().map_or(0, |header| header.revision());
        // The desired state is written: from here on the change must be
        // followed through (waited for, or undone), renewed marker or not.
        let keeper = match self.keep_lease(lease, ttl_secs).await {
            Ok(keeper) => Some(keeper),
            Err(error) => {
                log::warn!(
                    "{service}: cannot renew the change marker's lease ({error}); it expires in {ttl_secs} s"
                );
                None
            }
        };
        Ok(Change {
            service: service.to_owned(),
            lease,
            revision,
            keeper,
        })
    }

    /// Replaces the desired state `change` wrote with `desired` (restoring
    /// the previous one), if nobody wrote it since.
    pub async fn replace(&mut self, change: &mut Change, desired: &DesiredState) -> Result<()> {
        let key = self.keys.service(&change.service);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                change.revision,
            )])
            .and_then([TxnOp::put(key.as_str(), encode(desired), None)]);
        let response = self.write(&key, txn).await?;
        if !response.succeeded() {
            return Err(Error::FleetRaced {
                service: change.service.clone(),
            });
        }
        change.revision = response.header().map_or(0, |header| header.revision());
        Ok(())
    }

    /// Ends a change: its marker goes with its lease.
    pub async fn end_change(&mut self, change: Change) -> Result<()> {
        self.client
            .lease_revoke(change.lease)
            .await
            .map_err(Error::etcd("cannot release the change marker"))?;
        Ok(())
    }

    /// Renews `lease` every third of its TTL in a task of its own, until the
    /// task is aborted or etcd stops answering.
    async fn keep_lease(&mut self, lease: i64, ttl_secs: i64) -> Result<JoinHandle<()>> {
        let (mut keeper, mut responses) = self.keep_alive(lease).await?;
        let period = Duration::from_millis((ttl_secs.max(1) as u64) * 1000 / 3);
        Ok(tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if keeper.keep_alive().await.is_err()
                    || !matches!(responses.message().await, Ok(Some(_)))
                {
                    return;
                }
            }
        }))
    }

    /// A lease of `ttl_secs` for a daemon's host record.
    pub async fn grant(&mut self, ttl_secs: i64) -> Result<i64> {
        Ok(self
            .client
            .lease_grant(ttl_secs, None)
            .await
            .map_err(Error::etcd("cannot take an etcd lease for the host record"))?
            .id())
    }

    /// The keep-alive streams of `lease` (the daemon renews it itself, so
    /// that it notices a lost lease).
    pub async fn keep_alive(&mut self, lease: i64) -> Result<(LeaseKeeper, LeaseKeepAliveStream)> {
        self.client
            .lease_keep_alive(lease)
            .await
            .map_err(Error::etcd("cannot renew the etcd lease"))
    }

    /// Waits, up to `patience`, until the name `host` is free for this
    /// daemon: no record, or one attached to no lease or to `previous`
    /// (this daemon's lease before it reconnected). A record under another
    /// live lease is another daemon's, or that of this one before it
    /// crashed, which expires within its TTL: after `patience`, the name
    /// is refused with [`Error::FleetHostTaken`].
    pub async fn await_name(
        &mut self,
        host: &str,
        previous: Option<i64>,
        patience: Duration,
    ) -> Result<()> {
        let key = self.keys.host(host);
        let deadline = tokio::time::Instant::now() + patience;
        // Bounded by the deadline.
        loop {
            let response = self
                .client
                .get(key.as_str(), None)
                .await
                .map_err(Error::etcd(format!("cannot read {key} from etcd")))?;
            match response.kvs().first() {
                Some(kv) if !is_ours(kv, previous) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(taken(host, kv));
                    }
                }
                _ => return Ok(()),
            }
            tokio::time::sleep(REGISTER_POLL).await;
        }
    }

    /// Publishes a daemon's record under its `lease`, provided the name is
    /// this daemon's (see [`FleetClient::await_name`]; a record without a
    /// lease was written by hand, and attaching it again is what makes it
    /// expire). Returns the revision of the write.
    pub async fn register(
        &mut self,
        record: &HostRecord,
        lease: i64,
        previous: Option<i64>,
    ) -> Result<i64> {
        let key = self.keys.host(&record.host);
        let mut when = Compare::lease(key.as_str(), CompareOp::Equal, lease);
        // Each attempt fails only if the record changed since the last
        // one: a few in a row mean someone keeps rewriting it.
        for _ in 0..REGISTER_ATTEMPTS {
            let txn = Txn::new()
                .when([when])
                .and_then([TxnOp::put(
                    key.as_str(),
                    encode(record),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key.as_str(), None)]);
            let response = self.write(&key, txn).await?;
            if response.succeeded() {
                return Ok(response.header().map_or(0, |header| header.revision()));
            }
            let found = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(mut get) => get.take_kvs().into_iter().next(),
                _ => None,
            });
            when = match found {
                None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
                Some(kv) if is_ours(&kv, previous) => {
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision())
                }
                Some(kv) => return Err(taken(&record.host, &kv)),
            };
        }
        Err(Error::Etcd {
            action: format!("cannot write {key} to etcd"),
            reason: format!("it changed under each of {REGISTER_ATTEMPTS} attempts"),
        })
    }

    /// Leaves `conflict` in `conflicts/HOST` for `fleet status`, under a
    /// lease of its own so that it goes once the claimant stops retrying.
    pub async fn report_conflict(&mut self, conflict: &Conflict) -> Result<()> {
        let lease = self
            .client
            .lease_grant(CONFLICT_TTL_SECS, None)
            .await
            .map_err(Error::etcd(
                "cannot take an etcd lease for the conflict report",
            ))?
            .id();
        let key = self.keys.conflict(&conflict.host);
        self.client
            .put(
                key.as_str(),
                encode(conflict),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(Error::etcd(format!("cannot write {key} to etcd")))?;
        Ok(())
    }

    /// Watches every key below `dir` (one of [`Keys`]'s directories), from
    /// `revision` on or, with `None`, from now.
    pub async fn watch(&mut self, dir: &str, revision: Option<i64>) -> Result<WatchStream> {
        let mut options = WatchOptions::new().with_prefix();
        if let Some(revision) = revision {
            options = options.with_start_revision(revision);
        }
        self.client
            .watch(dir, Some(options))
            .await
            .map_err(Error::etcd(format!("cannot watch {dir} in etcd")))
    }

    /// Watches the one key `key` from `revision` on.
    pub async fn watch_key(&mut self, key: &str, revision: i64) -> Result<WatchStream> {
        self.client
            .watch(key, Some(WatchOptions::new().with_start_revision(revision)))
            .await
            .map_err(Error::etcd(format!("cannot watch {key} in etcd")))
    }

    /// A watched key's service name and desired state, or why it cannot be
    /// read (`None` for a deleted one).
    pub fn watched(&self, kv: &KeyValue) -> Option<(String, Desired)> {
        let name = name_below(kv, &self.keys.services())?;
        if kv.value().is_empty() {
            return None;
        }
        Some((name.to_owned(), read_desired(kv.value())))
    }
}
