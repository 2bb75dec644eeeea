//! etcd, as the fleet uses it: reading and compare-and-swapping desired
//! states, the change marker that keeps two operators apart, and the
//! daemons' leased host records.

use std::{collections::BTreeMap, time::Duration};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnResponse,
    WatchOptions, WatchStream,
};
use serde::{Serialize, de::DeserializeOwned};
use tokio::task::JoinHandle;

use super::{DesiredState, HostRecord, Keys};
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

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(Error::io(format!(
        "cannot read the etcd TLS file {}",
        path.display()
    )))
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|error| Error::FleetData {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: error.to_string(),
    })
}

fn encode(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("fleet documents serialise")
}

/// The name at the end of a key below `dir`.
fn name_below<'a>(kv: &'a KeyValue, dir: &str) -> Option<&'a str> {
    kv.key_str().ok()?.strip_prefix(dir)
}

impl FleetClient {
    /// Connects to the first of `endpoints` that answers.
    pub async fn connect(endpoints: &[String], prefix: &str, tls: &FleetTls) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(true);
        if tls.ca.is_some() || tls.cert.is_some() {
            let mut config = TlsOptions::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(Certificate::from_pem(read_pem(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                config = config.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            options = options.with_tls(config);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(Error::etcd(format!(
                "cannot connect to etcd at {}",
                endpoints.join(",")
            )))?;
        Ok(FleetClient {
            client,
            keys: Keys::new(prefix),
        })
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

    /// A service's desired state and its revision; `None` before the first
    /// fleet change.
    pub async fn desired(&mut self, service: &str) -> Result<Option<(DesiredState, i64)>> {
        let key = self.keys.service(service);
        let response = self
            .client
            .get(key.as_str(), None)
            .await
            .map_err(Error::etcd(format!("cannot read {key} from etcd")))?;
        response
            .kvs()
            .first()
            .map(|kv| Ok((decode(kv)?, kv.mod_revision())))
            .transpose()
    }

    /// Every service's desired state with its revision, and the revision of
    /// the read (a watch from the next one misses nothing).
    pub async fn list_desired(&mut self) -> Result<(BTreeMap<String, (DesiredState, i64)>, i64)> {
        let dir = self.keys.services();
        let (kvs, revision) = self.get_prefix(&dir).await?;
        let mut services = BTreeMap::new();
        for kv in &kvs {
            if let Some(name) = name_below(kv, &dir) {
                services.insert(name.to_owned(), (decode(kv)?, kv.mod_revision()));
            }
        }
        Ok((services, revision))
    }

    /// Runs `txn`, which writes `key` (named in the error).
    async fn write(&mut self, key: &str, txn: Txn) -> Result<TxnResponse> {
        self.client
            .txn(txn)
            .await
            .map_err(Error::etcd(format!("cannot write {key} to etcd")))
    }

    /// The live hosts' records (a host whose lease expired has none).
    pub async fn hosts(&mut self) -> Result<Vec<HostRecord>> {
        let (kvs, _) = self.get_prefix(&self.keys.hosts()).await?;
        kvs.iter().map(decode).collect()
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

    /// Publishes a daemon's record under its lease.
    pub async fn put_host(&mut self, record: &HostRecord, lease: i64) -> Result<()> {
        let key = self.keys.host(&record.host);
        self.client
            .put(
                key.as_str(),
                encode(record),
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

    /// A watched key's service name and desired state (`None` for a
    /// deleted one).
    pub fn watched(&self, kv: &KeyValue) -> Result<Option<(String, DesiredState)>> {
        let Some(name) = name_below(kv, &self.keys.services()) else {
            return Ok(None);
        };
        if kv.value().is_empty() {
            return Ok(None);
        }
        Ok(Some((name.to_owned(), decode(kv)?)))
    }
}
