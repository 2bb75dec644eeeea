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
    ServiceSpec {
        name: "web".to_owned(),
        vip: addr(vip),
        proto: Proto::Tcp,
        blue: addr(blue),
        green: addr(green),
        active: Color::Blue,
        health: None,
        auto_rollback: None,
    }
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

/// A valid service in `like`'s family, for swapping one address.
fn valid_like(like: &str) -> ServiceSpec {
    if addr(like).is_ipv4() {
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
fn each_rule_names_its_field() {
    let good = valid_like("10.0.0.1:80");
    let cases = [
        (
            ServiceSpec {
                name: "no spaces".to_owned(),
                ..good.clone()
            },
            ServiceField::Name,
            "only letters",
        ),
        (
            ServiceSpec {
                green: addr("[fd00::3]:80"),
                ..good.clone()
            },
            ServiceField::Green,
            "share one address family",
        ),
        (
            ServiceSpec {
                blue: good.vip,
                ..good.clone()
            },
            ServiceField::Blue,
            "the blue backend cannot be the VIP itself",
        ),
        (
            ServiceSpec {
                green: good.blue,
                ..good.clone()
            },
            ServiceField::Green,
            "blue and green are both",
        ),
        (
            ServiceSpec {
                health: Some(HealthCheck {
                    timeout_ms: 5000,
                    ..HealthCheck::new(Probe::Tcp)
                }),
                ..good.clone()
            },
            ServiceField::Health,
            "health: timeout_ms",
        ),
        (
            ServiceSpec {
                auto_rollback: Some(AutoRollback {
                    window_secs: 0,
                    force: false,
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
        blue: addr("[fd00::2]:80"),
        ..valid_like("10.0.0.1:80")
    };
    let invalid = spec.validate().unwrap_err();
    let message = invalid.to_string();
    let error: Error = invalid.into();
    assert_eq!(error.to_string(), message);
    assert!(matches!(error, Error::FamilyMismatch { .. }), "{error:?}");
}
