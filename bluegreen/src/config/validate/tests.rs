//! Each rule a service must follow, on its own and with the field it blames.

use super::*;
use crate::{
    config::AutoRollback,
    endpoint::Proto,
    health::{HealthCheck, Probe},
};

fn addr(text: &str) -> SocketAddr {
    text.parse()
        .unwrap_or_else(|error| panic!("{text}: {error}"))
}

fn spec(vip: &str, blue: &str, green: &str) -> ServiceSpec {
    ServiceSpec::new(
        "web".to_owned(),
        addr(vip),
        Proto::Tcp,
        PoolSpec::one(addr(blue)),
        PoolSpec::one(addr(green)),
    )
}

/// The field and one-line message of a spec that must be refused.
fn refused(spec: &ServiceSpec) -> (ServiceField, String) {
    match spec.validate() {
        Err(FieldError { field, error }) => {
            let message = error.to_string();
            assert_eq!(message.lines().count(), 1, "{message}");
            (field, message)
        }
        Ok(()) => panic!("{spec:?} should be refused"),
    }
}

/// Every kind of address neither a VIP nor a backend can be, in both
/// families where the kind exists, with the word its message must use.
const UNUSABLE: [(&str, &str); 10] = [
    ("127.0.0.1:80", "loopback"),
    ("127.12.0.9:80", "loopback"),
    ("[::1]:80", "loopback"),
    ("224.0.0.1:80", "multicast"),
    ("239.255.0.7:80", "multicast"),
    ("[ff02::1]:80", "multicast"),
    ("[ff3e::8000:1]:80", "multicast"),
    ("255.255.255.255:80", "broadcast"),
    ("0.0.0.0:80", "unspecified"),
    ("[::]:80", "unspecified"),
];

/// A valid service in `bad`'s family, for swapping one address.
fn valid_like(bad: &str) -> ServiceSpec {
    if addr(bad).is_ipv4() {
        spec("10.0.0.1:80", "10.1.0.2:80", "10.1.0.3:80")
    } else {
        spec("[fd00::1]:80", "[fd00::2]:80", "[fd00::3]:80")
    }
}

#[test]
fn a_valid_service_passes_in_both_families() {
    for family in ["10.0.0.1:80", "[fd00::1]:80"] {
        let spec = valid_like(family);
        spec.validate()
            .unwrap_or_else(|error| panic!("{spec:?}: {error}"));
    }
}

#[test]
fn unusable_vips_are_refused_on_the_vip() {
    for (bad, kind) in UNUSABLE {
        let spec = ServiceSpec {
            vip: addr(bad),
            ..valid_like(bad)
        };
        let (field, message) = refused(&spec);
        assert_eq!(field, ServiceField::Vip, "{message}");
        assert!(
            message.starts_with(&format!("service web: VIP {} is ", addr(bad))),
            "{message}"
        );
        assert!(message.contains(kind), "{bad}: {message}");
        assert!(message.contains(": use "), "{bad}: {message}");
    }
}

#[test]
fn unusable_backends_are_refused_on_their_color() {
    for (bad, kind) in UNUSABLE {
        for color in Color::BOTH {
            let mut spec = valid_like(bad);
            match color {
                Color::Blue => spec.blue = PoolSpec::one(addr(bad)),
                Color::Green => spec.green = PoolSpec::one(addr(bad)),
            }
            let (field, message) = refused(&spec);
            assert_eq!(field, ServiceField::from(color), "{message}");
            assert!(
                message.starts_with(&format!("service web: {color} backend {} is ", addr(bad))),
                "{message}"
            );
            assert!(message.contains(kind), "{bad}: {message}");
            assert!(message.contains(": use "), "{bad}: {message}");
        }
    }
}

#[test]
fn a_loopback_backend_says_xdp_cannot_reach_it() {
    let error = validate_backend(
        "web",
        addr("10.0.0.1:80"),
        Color::Green,
        addr("127.0.0.1:80"),
    )
    .unwrap_err();
    assert!(
        matches!(&error, Error::UnusableAddress { what, .. } if what == "green backend"),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("XDP cannot forward packets to"),
        "{error}"
    );
}

#[test]
fn validate_backend_checks_family_and_the_vip() {
    let vip = addr("10.0.0.1:80");
    assert_eq!(
        validate_backend("web", vip, Color::Blue, addr("10.1.0.9:80")).ok(),
        Some(())
    );
    let error = validate_backend("web", vip, Color::Green, addr("[fd00::9]:80")).unwrap_err();
    assert!(
        matches!(&error, Error::FamilyMismatch { what, .. } if what == "green backend"),
        "{error:?}"
    );
    let error = validate_backend("web", vip, Color::Blue, vip)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "service web: the blue backend cannot be the VIP itself"
    );
    // Another port on the VIP's address is a different socket.
    assert_eq!(
        validate_backend("web", vip, Color::Blue, addr("10.0.0.1:8080")).ok(),
        Some(())
    );
}

#[test]
fn each_rule_names_its_field() {
    let good = valid_like("10.0.0.1:80");
    let cases = [
        (
            ServiceSpec {
                name: "no spaces".to_owned(),
                ..good.clone()
            },
            ServiceField::Name,
            "letters, digits",
        ),
        (
            ServiceSpec {
                green: PoolSpec::one(addr("[fd00::3]:80")),
                ..good.clone()
            },
            ServiceField::Green,
            "share one address family",
        ),
        (
            ServiceSpec {
                blue: PoolSpec::one(good.vip),
                ..good.clone()
            },
            ServiceField::Blue,
            "the blue backend cannot be the VIP itself",
        ),
        (
            ServiceSpec {
                green: good.blue.clone(),
                ..good.clone()
            },
            ServiceField::Green,
            "10.1.0.2:80 is in both blue and green",
        ),
        (
            ServiceSpec {
                health: Some(HealthCheck {
                    port: Some(0),
                    ..HealthCheck::new(Probe::Tcp)
                }),
                ..good.clone()
            },
            ServiceField::Health,
            "health: port 0",
        ),
        (
            ServiceSpec {
                auto_rollback: Some(AutoRollback {
                    window_secs: 0,
                    force: false,
                    analysis: false,
                }),
                ..good.clone()
            },
            ServiceField::AutoRollback,
            "auto_rollback needs a health check",
        ),
    ];
    for (spec, expected, text) in cases {
        let (field, message) = refused(&spec);
        assert_eq!(field, expected, "{message}");
        assert!(message.contains(text), "expected {text:?} in {message}");
    }
}

#[test]
fn callers_without_a_file_get_the_plain_error() {
    let spec = ServiceSpec {
        vip: addr("127.0.0.1:80"),
        ..valid_like("10.0.0.1:80")
    };
    let invalid = spec.validate().unwrap_err();
    let message = invalid.to_string();
    let error: Error = invalid.into();
    assert_eq!(error.to_string(), message);
    assert!(matches!(error, Error::UnusableAddress { .. }), "{error:?}");
}
