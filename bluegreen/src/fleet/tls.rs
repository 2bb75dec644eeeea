//! The fleet's TLS files, read and checked before etcd is contacted. etcd
//! refuses a client certificate it does not accept by closing the
//! connection, which reaches a client as nothing better than "connection
//! closed" or "transport error": what can be known about the files is
//! found out here, and the rest is named as the likely cause when etcd
//! closes the connection.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use etcd_client::{Certificate, Identity, TlsOptions};
use rustls::{
    CertificateError, InconsistentKeys, RootCertStore,
    crypto::ring::default_provider,
    pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
    server::WebPkiClientVerifier,
    sign::CertifiedKey,
};

use crate::{
    config::FleetTls,
    error::{Error, Result},
};

/// The checked TLS settings of a connection to etcd.
pub struct Tls {
    pub options: TlsOptions,
    ca: Option<PathBuf>,
    /// Why etcd would close the connection during the handshake.
    suspect: String,
}

fn fail(reason: String) -> Error {
    Error::FleetTls { reason }
}

/// Reads `path`, `what` the error calls it. The OS error is part of the
/// message, not a source: it is printed once.
fn read(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| {
        fail(format!(
            "cannot read the {what} {}: {error}",
            path.display()
        ))
    })
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|error| fail(format!("{} is not PEM: {error}", path.display())))?;
    if certificates.is_empty() {
        return Err(fail(format!("no certificate in {}", path.display())));
    }
    Ok(certificates)
}

/// Reads and checks `tls`: `None` for a plain connection.
pub fn load(tls: &FleetTls) -> Result<Option<Tls>> {
    if tls.ca.is_none() && tls.cert.is_none() {
        return Ok(None);
    }
    let mut options = TlsOptions::new();
    let mut roots = None;
    if let Some(ca) = &tls.ca {
        let pem = read(ca, "CA certificate")?;
        roots = Some(certificates(&pem, ca)?);
        options = options.ca_certificate(Certificate::from_pem(pem));
    }
    let suspect = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert, "client certificate")?;
            let key_pem = read(key, "client certificate's private key")?;
            let chain = certificates(&cert_pem, cert)?;
            check_key(&chain, &key_pem, cert, key)?;
            let suspect = match (&roots, &tls.ca) {
                (Some(roots), Some(ca)) => check_chain(&chain, roots, cert, ca)?,
                _ => None,
            };
            options = options.identity(Identity::from_pem(cert_pem, key_pem));
            suspect.unwrap_or_else(|| {
                format!(
                    "it refused the client certificate {} (signed by a CA its --trusted-ca-file does not hold?)",
                    cert.display()
                )
            })
        }
        _ => "no client certificate was given, and etcd requires one (--client-cert-auth): pass --cert and --key (cert and key in [fleet])".to_owned(),
    };
    Ok(Some(Tls {
        options,
        ca: tls.ca.clone(),
        suspect,
    }))
}

/// The private key must be the certificate's.
fn check_key(chain: &[CertificateDer<'static>], pem: &[u8], cert: &Path, key: &Path) -> Result<()> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|error| fail(format!("no private key in {}: {error}", key.display())))?;
    let signing = default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|error| {
            fail(format!(
                "cannot use the private key in {}: {error}",
                key.display()
            ))
        })?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(fail(format!(
            "the private key in {} does not match the certificate in {}",
            key.display(),
            cert.display()
        ))),
        // A key that cannot tell its public half is left to the handshake.
        _ => Ok(()),
    }
}

/// A client certificate out of its validity is an error; one that the CA
/// of etcd's server certificate did not sign may still be trusted by etcd
/// (which may trust another CA for clients): that is only the suspect.
fn check_chain(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    cert: &Path,
    ca: &Path,
) -> Result<Option<String>> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|error| fail(format!("{} is not a CA certificate: {error}", ca.display())))?;
    }
    let Ok(verifier) =
        WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::new(default_provider()))
            .build()
    else {
        return Ok(None);
    };
    let (end_entity, intermediates) = chain.split_first().expect("one certificate at least");
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        )) => Err(fail(format!(
            "the client certificate {0} has expired (`openssl x509 -noout -enddate -in {0}` says when): renew it",
            cert.display()
        ))),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
        )) => Err(fail(format!(
            "the client certificate {} is not valid yet: is this machine's clock right?",
            cert.display()
        ))),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            Ok(Some(format!(
                "it refused the client certificate {}, which is not signed by the CA in {}: etcd does not trust a client certificate unless its --trusted-ca-file holds the CA that signed it",
                cert.display(),
                ca.display()
            )))
        }
        Err(error) => Ok(Some(format!(
            "it refused the client certificate {} ({error})",
            cert.display()
        ))),
        Ok(_) => Ok(None),
    }
}

impl Tls {
    /// What a failed request says about TLS: `error` rewritten when it is
    /// etcd's server certificate that did not verify, or etcd that closed
    /// the connection (which it does to a client certificate it refuses).
    pub fn explain(&self, error: Error) -> Error {
        let Error::Etcd { reason, .. } = &error else {
            return error;
        };
        let ca = self
            .ca
            .as_ref()
            .map_or("the system's roots".to_owned(), |ca| {
                format!("the CA in {}", ca.display())
            });
        let reason = if reason.contains("invalid peer certificate: UnknownIssuer") {
            format!(
                "etcd's server certificate is not signed by {ca} (unknown CA): give the CA that signed it (--cacert, ca in [fleet])"
            )
        } else if let Some((_, detail)) = reason.split_once("invalid peer certificate: ") {
            format!("etcd's server certificate is refused ({detail}), checked against {ca}")
        } else if [
            "connection closed",
            "operation was canceled",
            "transport error",
            "reset by peer",
            "broken pipe",
        ]
        .iter()
        .any(|sign| reason.contains(sign))
        {
            format!(
                "etcd closed the connection during the TLS handshake: {}",
                self.suspect
            )
        } else {
            return error;
        };
        fail(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(suspect: &str) -> Tls {
        Tls {
            options: TlsOptions::new(),
            ca: Some(PathBuf::from("/etc/ca.pem")),
            suspect: suspect.to_owned(),
        }
    }

    fn explained(reason: &str) -> String {
        let error = Error::Etcd {
            action: "cannot read /p/v1/services/ from etcd".to_owned(),
            reason: reason.to_owned(),
        };
        tls("no client certificate was given")
            .explain(error)
            .to_string()
    }

    #[test]
    fn a_failed_handshake_is_explained_and_anything_else_left_alone() {
        let unknown = explained("invalid peer certificate: UnknownIssuer");
        assert!(
            unknown.contains("not signed by the CA in /etc/ca.pem"),
            "{unknown}"
        );
        let expired = explained("invalid peer certificate: Expired");
        assert!(
            expired.contains("server certificate is refused (Expired)"),
            "{expired}"
        );
        for closed in [
            "operation was canceled",
            "transport error",
            "h2: connection closed",
        ] {
            let explained = explained(closed);
            assert!(
                explained.contains(
                    "closed the connection during the TLS handshake: no client certificate"
                ),
                "{explained}"
            );
        }
        let refused = explained("tcp connect error: Connection refused (os error 111)");
        assert!(
            refused.contains("Connection refused") && !refused.contains("TLS"),
            "{refused}"
        );
    }
}
