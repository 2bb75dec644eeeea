//! State files: round trip, damage, planted symlinks, placeholder names.

use super::*;
use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
};

fn sample(iface: &str) -> InterfaceState {
    InterfaceState {
        version: STATE_VERSION,
        interface: iface.to_owned(),
        xdp_mode: "native".to_owned(),
        requested_xdp_mode: RequestedXdpMode::Auto,
        flow_capacity: 4096,
        tcp_idle_timeout_secs: 3600,
        tcp_closing_timeout_secs: 5,
        udp_idle_timeout_secs: 30,
        services: vec![ServiceRecord {
            spec: ServiceSpec {
                active: Color::Green,
                ..ServiceSpec::new(
                    "chat".to_owned(),
                    "10.0.0.1:80".parse().unwrap(),
                    Proto::Tcp,
                    "10.1.0.2:80".parse().unwrap(),
                    "10.1.0.3:80".parse().unwrap(),
                )
            },
            previous: Color::Blue,
            counter_slot: 0,
            switched_at_unix_ms: Some(1_700_000_000_000),
            weight: 10,
            preview: vec!["10.200.1.0/24".to_owned()],
        }],
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bluegreen-state-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn saved_state_reads_back_and_is_private() {
    let dir = scratch_dir("roundtrip");
    let store = StateStore::new(&dir);
    store.save(&sample("veth0")).unwrap();
    assert_eq!(store.load("veth0").unwrap(), Some(sample("veth0")));
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&store.path("veth0")), 0o600);
    store.remove("veth0").unwrap();
    assert_eq!(store.load("veth0").unwrap(), None);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_or_foreign_state_file_is_reported_not_guessed() {
    let dir = scratch_dir("corrupt");
    let store = StateStore::new(&dir);
    store.save(&sample("veth1")).unwrap();
    let path = store.path("veth1");
    let good = fs::read(&path).unwrap();
    let foreign = String::from_utf8(good.clone())
        .unwrap()
        .replace("\"veth1\"", "\"veth9\"");
    let replace = |contents: &[u8]| {
        let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir(&path));
        fs::write(&path, contents).unwrap();
    };
    let cases: [(&dyn Fn(), &str); 7] = [
        (&|| replace(&good[..good.len() / 2]), "EOF while parsing"),
        (&|| replace(b""), "it is empty"),
        (&|| replace(&[0xff, 0xfe]), "it is not UTF-8"),
        (
            &|| replace(foreign.as_bytes()),
            "it describes interface veth9",
        ),
        (
            &|| {
                fs::remove_file(&path).unwrap();
                symlink(store.path("veth0"), &path).unwrap();
            },
            "symbolic link",
        ),
        (
            &|| {
                fs::remove_file(&path).unwrap();
                fs::create_dir(&path).unwrap();
            },
            "not a regular file",
        ),
        (
            &|| {
                fs::remove_dir(&path).unwrap();
                let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
                // SAFETY: a valid C string.
                assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
            },
            "not a regular file",
        ),
    ];
    for (damage, expected) in cases {
        damage();
        match store.load("veth1") {
            Err(Error::CorruptState { path: at, reason }) => {
                assert_eq!(at, path);
                assert!(reason.contains(expected), "{reason:?} lacks {expected:?}");
            }
            other => panic!("expected CorruptState ({expected}), got {other:?}"),
        }
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn planted_symlinks_redirect_no_write() {
    let dir = scratch_dir("planted");
    let store = StateStore::new(&dir);
    store.save(&sample("veth2")).unwrap();
    let victim = dir.with_extension("victim");
    fs::write(&victim, "victim").unwrap();
    fs::remove_file(store.path("veth2")).unwrap();
    symlink(&victim, store.path("veth2")).unwrap();
    symlink(&victim, dir.join(".veth2.json.tmp")).unwrap();
    store.save(&sample("veth2")).unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "victim");
    assert!(fs::symlink_metadata(store.path("veth2")).unwrap().is_file());
    assert_eq!(store.load("veth2").unwrap(), Some(sample("veth2")));

    let absent = dir.with_extension("absent");
    symlink(&absent, dir.join("veth2.lock")).unwrap();
    assert!(matches!(
        store.lock("veth2"),
        Err(Error::SymlinkedLock { .. })
    ));
    assert!(fs::symlink_metadata(&absent).is_err(), "nothing created");
    fs::remove_file(&victim).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_daemon_lock_is_taken_once_and_never_through_a_symlink() {
    let dir = scratch_dir("daemon-lock");
    let store = StateStore::new(&dir);
    let held = store
        .try_lock_daemon("veth3")
        .unwrap()
        .expect("the first daemon takes it");
    assert!(
        store.try_lock_daemon("veth3").unwrap().is_none(),
        "a second daemon does not wait for it"
    );
    assert!(
        store.try_lock_daemon("veth4").unwrap().is_some(),
        "another interface's daemon is another lock"
    );
    drop(held);
    assert!(
        store.try_lock_daemon("veth3").unwrap().is_some(),
        "released"
    );

    let absent = dir.with_extension("absent");
    symlink(&absent, dir.join("veth5.daemon.lock")).unwrap();
    assert!(matches!(
        store.try_lock_daemon("veth5"),
        Err(Error::SymlinkedLock { .. })
    ));
    assert!(fs::symlink_metadata(&absent).is_err(), "nothing created");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_directory_others_can_write_is_refused_and_left_alone() {
    let dir = scratch_dir("open");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let store = StateStore::new(&dir);
    assert!(matches!(
        store.save(&sample("veth3")),
        Err(Error::UnsafeDirectory { .. })
    ));
    assert!(matches!(
        store.lock("veth3"),
        Err(Error::UnsafeDirectory { .. })
    ));
    assert!(matches!(
        store.load("veth3"),
        Err(Error::UnsafeDirectory { .. })
    ));
    assert_eq!(mode(&dir), 0o777);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_placeholder_name_is_never_a_configured_one() {
    let record = &sample("veth4").services[0];
    assert!(!record.has_placeholder_name());
    let name = placeholder_name(record.spec.vip, record.spec.proto);
    assert_eq!(name, "10.0.0.1:80/tcp");
    record.spec.validate().expect("the sample is valid");
    let renamed = ServiceSpec {
        name,
        ..record.spec.clone()
    };
    assert!(
        renamed.validate().is_err(),
        "a configured name cannot be it"
    );
}

#[test]
fn a_state_file_from_before_pools_still_loads_and_is_rewritten_as_pools() {
    let dir = scratch_dir("pools");
    let store = StateStore::new(&dir);
    let mut state = sample("veth0");
    // The form every earlier bluegreen wrote: one address per color.
    let old = serde_json::to_string(&state)
        .unwrap()
        .replace(
            r#""blue":[{"addr":"10.1.0.2:80","weight":1}]"#,
            r#""blue":"10.1.0.2:80""#,
        )
        .replace(
            r#""green":[{"addr":"10.1.0.3:80","weight":1}]"#,
            r#""green":"10.1.0.3:80""#,
        );
    assert!(old.contains(r#""blue":"10.1.0.2:80""#), "{old}");
    store.save(&state).unwrap();
    fs::write(store.path("veth0"), &old).unwrap();
    assert_eq!(store.load("veth0").unwrap(), Some(state.clone()));

    // A pool with a weight, a drained and an unhealthy backend survives a
    // round trip.
    let blue = &mut state.services[0].spec.blue;
    blue.backends_mut()[0].weight = 3;
    blue.backends_mut()[0].unhealthy = true;
    blue.backends_mut().push(crate::config::BackendSpec {
        drained: true,
        ..crate::config::BackendSpec::new("10.1.0.4:80".parse().unwrap())
    });
    store.save(&state).unwrap();
    let text: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(store.path("veth0")).unwrap()).unwrap();
    assert_eq!(
        text["services"][0]["blue"],
        serde_json::json!([
            {"addr": "10.1.0.2:80", "weight": 3, "unhealthy": true},
            {"addr": "10.1.0.4:80", "weight": 1, "drained": true}
        ])
    );
    assert_eq!(store.load("veth0").unwrap(), Some(state));
    fs::remove_dir_all(&dir).unwrap();
}
