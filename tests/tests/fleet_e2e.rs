//! The fleet end to end: a real etcd (TLS, client certificates and the
//! README's least-privilege roles), three hosts each with its own daemon,
//! and `bluegreen fleet` switching them all or none.

use std::time::{Duration, Instant};

use bluegreen_testbed::{
    cli::CliRun,
    fleet::{FleetBed, FleetHost, LEASE_TTL_SECS, OPERATOR, PREFIX, etcd_url, live_hosts_in},
    metrics::{metric, scrape},
};

/// Bounds every fleet command; a host applies within milliseconds.
const TIMEOUT: &str = "15";

fn all(bed: &FleetBed) -> Vec<&FleetHost> {
    bed.hosts.iter().collect()
}

/// Each host's applied state of "web" in `fleet status --json`.
fn applied(bed: &FleetBed) -> Vec<(String, serde_json::Value)> {
    let status = bed.status();
    status["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|host| {
            (
                host["host"].as_str().expect("name").to_owned(),
                host["services"]["web"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_fleet_switch_reaches_every_host_and_status_shows_them() {
    let mut bed = FleetBed::new(3);
    bed.start();
    bed.wait_serving(&all(&bed), "blue", Duration::from_secs(5));

    let started = Instant::now();
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    let elapsed = started.elapsed();
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("converged in"), "{}", run.stdout);
    for host in ["h1", "h2", "h3"] {
        assert!(
            run.stdout.contains(&format!("  {host}: applied")),
            "{}",
            run.stdout
        );
    }
    // Applied means switched: every host serves green at once.
    for host in &bed.hosts {
        assert_eq!(host.get(), "green", "{}", host.name);
    }
    eprintln!("fleet switch of 3 hosts converged in {elapsed:?}");

    let status = bed.status();
    let revision = status["services"]["web"]["revision"]
        .as_i64()
        .expect("revision");
    assert_eq!(
        status["services"]["web"]["desired"]["color"], "green",
        "{status}"
    );
    assert!(
        status["services"]["web"]["change_in_progress"].is_null(),
        "{status}"
    );
    let hosts = applied(&bed);
    assert_eq!(hosts.len(), 3, "{status}");
    for (host, web) in hosts {
        assert_eq!(web["color"], "green", "{host}: {web}");
        assert_eq!(web["revision"], revision, "{host}: {web}");
        assert_eq!(web["lag"], 0, "{host}: {web}");
        assert_eq!(web["in_sync"], true, "{host}: {web}");
        assert!(web["refused"].is_null(), "{host}: {web}");
    }
    // Each host counts the switch as the fleet's, not an operator's.
    for host in &bed.hosts {
        let service = &host.fixture.bluegreen.status()["interfaces"][0]["services"][0];
        assert_eq!(service["switches"]["fleet"], 1, "{}: {service}", host.name);
        assert_eq!(
            service["switches"]["operator"], 0,
            "{}: {service}",
            host.name
        );
    }

    // The table names each host; a rollback brings them all back.
    let table = bed.fleet(&["status"]);
    assert_eq!(table.code, 0, "{table:?}");
    for host in ["h1", "h2", "h3"] {
        assert!(table.stdout.contains(host), "{}", table.stdout);
    }
    let run = bed.fleet(&["rollback", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    for host in &bed.hosts {
        assert_eq!(host.get(), "blue", "{}", host.name);
    }

    // A local switch of the fleet's service is refused and names the fleet
    // command; an override goes through and the fleet sees the drift.
    let local = bed.hosts[0].fixture.bluegreen.run(&["switch", "green"]);
    assert_ne!(local.code, 0, "{local:?}");
    assert!(
        local.stderr.contains("bluegreen fleet switch"),
        "{}",
        local.stderr
    );
    assert_eq!(bed.hosts[0].get(), "blue");
    bed.hosts[0]
        .fixture
        .bluegreen
        .ok(&["switch", "green", "--local-override"]);
    assert_eq!(bed.hosts[0].get(), "green");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, web) = applied(&bed).remove(0);
        if web["drift"].is_string() && web["in_sync"] == false {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h1's drift never reported: {web}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_host_that_refuses_undoes_the_switch_everywhere() {
    let mut bed = FleetBed::new(3);
    bed.hosts[2].fixture.stop_green();
    bed.start();

    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("h3 refused"), "{}", run.stderr);
    assert!(
        run.stderr.contains("failed its health check"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("was undone"), "{}", run.stderr);
    assert!(
        run.stderr.contains("every live host is back on blue"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("h1 refused"), "{}", run.stderr);
    for host in &bed.hosts {
        assert_eq!(host.get(), "blue", "{}", host.name);
    }
    let status = bed.status();
    assert_eq!(
        status["services"]["web"]["desired"]["color"], "blue",
        "{status}"
    );
    for (host, web) in applied(&bed) {
        assert_eq!(web["color"], "blue", "{host}: {web}");
        assert_eq!(web["in_sync"], true, "{host}: {web}");
    }

    // --best-effort keeps the hosts that could.
    let run = bed.fleet(&["switch", "green", "--best-effort", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("--best-effort"), "{}", run.stderr);
    assert!(run.stderr.contains("h3 refused"), "{}", run.stderr);
    assert_eq!(bed.hosts[0].get(), "green");
    assert_eq!(bed.hosts[1].get(), "green");
    assert_eq!(bed.hosts[2].get(), "blue");
    let (host, web) = applied(&bed).remove(2);
    assert!(
        web["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("health check")),
        "{host}: {web}"
    );
}

/// The canary flow: a split first, then the full switch. When a host
/// refuses the full switch, the others must return to the split, which
/// changes their active color back.
#[test]
fn a_refused_full_switch_returns_every_host_to_the_split() {
    let mut bed = FleetBed::new(3);
    bed.start();
    let run = bed.fleet(&["switch", "green", "--weight", "10", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    let split = |bed: &FleetBed| {
        for (host, web) in applied(bed) {
            assert_eq!(
                (&web["color"], &web["weight"]),
                (&"blue".into(), &10.into()),
                "{host}: {web}"
            );
            assert_eq!(web["in_sync"], true, "{host}: {web}");
        }
    };
    split(&bed);

    bed.hosts[2].fixture.stop_green();
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("h3 refused"), "{}", run.stderr);
    assert!(run.stderr.contains("was undone"), "{}", run.stderr);
    split(&bed);
}

#[test]
fn without_etcd_traffic_stays_and_the_fleet_resumes_when_it_returns() {
    let mut bed = FleetBed::new(3);
    bed.start();
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");

    bed.etcd.stop();
    for host in &bed.hosts {
        let deadline = Instant::now() + Duration::from_secs(15);
        while metric(&scrape(&host.fixture), "bluegreen_fleet_connected") != 0.0 {
            assert!(Instant::now() < deadline, "{}: still connected", host.name);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(host.get(), "green", "{}", host.name);
        let status = host.fixture.bluegreen.ok(&["status"]);
        assert!(status.contains("NOT connected to etcd"), "{status}");
    }
    let run = bed.fleet(&["switch", "blue", "--timeout", "2"]);
    assert_ne!(run.code, 0, "{run:?}");
    for host in &bed.hosts {
        assert_eq!(host.get(), "green", "{}: unchanged without etcd", host.name);
    }

    bed.etcd.start();
    for host in &bed.hosts {
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(&scrape(&host.fixture), "bluegreen_fleet_connected") != 1.0 {
            assert!(
                Instant::now() < deadline,
                "{}: never reconnected",
                host.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let names: Vec<String> = bed.hosts.iter().map(|host| host.name.clone()).collect();
    bed.wait_for_hosts(&names, Duration::from_secs(10));
    let run = bed.fleet(&["switch", "blue", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    for host in &bed.hosts {
        assert_eq!(host.get(), "blue", "{}", host.name);
    }
}

#[test]
fn a_dead_daemon_is_not_waited_for_and_converges_when_back() {
    let mut bed = FleetBed::new(3);
    bed.start();
    bed.hosts[2].kill_daemon();
    bed.wait_for_hosts(
        &["h1".to_owned(), "h2".to_owned()],
        Duration::from_secs(LEASE_TTL_SECS * 3),
    );

    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("every live host (2)"), "{}", run.stdout);
    assert_eq!(bed.hosts[0].get(), "green");
    assert_eq!(bed.hosts[1].get(), "green");
    assert_eq!(bed.hosts[2].get(), "blue", "h3 had no daemon to apply it");

    bed.hosts[2].start_daemon();
    let names: Vec<String> = bed.hosts.iter().map(|host| host.name.clone()).collect();
    bed.wait_for_hosts(&names, Duration::from_secs(10));
    bed.wait_serving(&[&bed.hosts[2]], "green", Duration::from_secs(10));
    let (host, web) = applied(&bed).remove(2);
    assert_eq!(web["in_sync"], true, "{host}: {web}");
}

#[test]
fn of_two_concurrent_fleet_switches_one_wins_and_the_other_fails_cleanly() {
    let mut bed = FleetBed::new(3);
    bed.start();
    // h3's daemon stands still, so the first switch is still waiting for
    // it when the second one starts.
    bed.hosts[2].signal_daemon(libc::SIGSTOP);
    let first = bed
        .command(&["switch", "green", "--timeout", TIMEOUT])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the first fleet switch");
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.status()["services"]["web"]["change_in_progress"].is_null() {
        assert!(Instant::now() < deadline, "the first switch never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = bed.fleet(&["switch", "blue", "--timeout", TIMEOUT]);
    bed.hosts[2].signal_daemon(libc::SIGCONT);
    let first: CliRun = first.wait_with_output().expect("first fleet switch").into();

    assert_eq!(first.code, 0, "{first:?}");
    assert_eq!(second.code, 1, "{second:?}");
    assert!(
        second.stderr.contains("already in progress"),
        "{}",
        second.stderr
    );
    assert!(
        second.stdout.is_empty(),
        "the loser wrote nothing: {}",
        second.stdout
    );
    bed.wait_serving(&all(&bed), "green", Duration::from_secs(10));
    let status = bed.status();
    assert_eq!(
        status["services"]["web"]["desired"]["color"], "green",
        "{status}"
    );
}

/// Waits (at most 10 s) until `check` holds of `fleet status --json`;
/// `what` says what was awaited when it does not.
fn wait_status(bed: &FleetBed, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = bed.status();
        if check(&status) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}, never: {status:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The keys `fleet status --json` lists as ignored.
fn ignored(status: &serde_json::Value) -> Vec<String> {
    status["ignored"]
        .as_array()
        .map(|ignored| {
            ignored
                .iter()
                .map(|entry| entry["key"].as_str().expect("key").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every live host keeps its etcd session (issue 24: one bad key ended
/// them all).
fn assert_connected(bed: &FleetBed) {
    for host in &bed.hosts {
        assert_eq!(
            metric(&scrape(&host.fixture), "bluegreen_fleet_connected"),
            1.0,
            "{}",
            host.name
        );
    }
}

/// Writes `value` to `services/web` as the operator and waits until every
/// host refuses it with an error containing `expected`, while staying
/// connected and on `serving`.
fn assert_refused_everywhere(bed: &FleetBed, value: &str, expected: &str, serving: &str) {
    let key = format!("{PREFIX}/v1/services/web");
    bed.etcd.etcdctl_ok(OPERATOR, &["put", &key, value]);
    wait_status(bed, &format!("every host refusing {value}"), |status| {
        status["hosts"].as_array().is_some_and(|hosts| {
            hosts.len() == 3
                && hosts.iter().all(|host| {
                    host["services"]["web"]["last_error"]
                        .as_str()
                        .is_some_and(|error| error.contains(expected))
                })
        })
    });
    let status = bed.status();
    assert!(
        status["services"]["web"]["unreadable"]
            .as_str()
            .is_some_and(|reason| reason.contains(expected)),
        "{status:#}"
    );
    let table = bed.fleet(&["status"]);
    assert!(table.stdout.contains("UNREADABLE"), "{table:?}");
    for host in &bed.hosts {
        let metrics = scrape(&host.fixture);
        assert_eq!(
            metric(
                &metrics,
                "bluegreen_fleet_desired_unreadable{service=\"web\"}"
            ),
            1.0,
            "{}",
            host.name
        );
        assert_eq!(
            metric(&metrics, "bluegreen_fleet_connected"),
            1.0,
            "{}",
            host.name
        );
        assert_eq!(host.get(), serving, "{}", host.name);
    }
}

/// Issue 24: a record or desired state that bluegreen cannot read, a
/// record detached from its lease and a second daemon under a host name
/// already taken each affect only themselves. Runs as the README says a
/// fleet should: TLS, client certificates, least-privilege roles.
#[test]
fn a_bad_key_or_a_taken_host_name_affects_only_itself() {
    let mut bed = FleetBed::new(4);
    // h4 is a copy of h2 (same name, same certificate), as a cloned
    // machine would be; it is started on its own below.
    let mut twin = bed.hosts.pop().expect("h4");
    twin.configure(&bed.etcd.pki, "h2", "");
    bed.start();
    let names: Vec<String> = bed.hosts.iter().map(|host| host.name.clone()).collect();
    let hosts_dir = format!("{PREFIX}/v1/hosts/");

    // A host's own certificate may write its record: a bad one, put
    // without the lease. Its daemon writes it back under the lease.
    let h1 = format!("{hosts_dir}h1");
    let bad = r#"{"schema_version":1,"host":"h1","services":{"web":{"color":"blue"}}}"#;
    bed.etcd.etcdctl_ok("h1", &["put", &h1, bad]);
    wait_status(&bed, "h1 re-attached", |status| {
        live_hosts_in(status) == names && ignored(status).is_empty()
    });
    let stored: serde_json::Value =
        serde_json::from_str(&bed.etcd.etcdctl_ok(OPERATOR, &["get", &h1, "-w", "json"]))
            .expect("etcdctl json");
    assert_ne!(stored["kvs"][0]["lease"], 0, "{stored}");
    // ... and no other's.
    let other = bed
        .etcd
        .etcdctl("h1", &["put", &format!("{hosts_dir}h2"), bad]);
    assert_ne!(other.code, 0, "h1 wrote h2's record: {other:?}");

    // Garbage, and a copy of a valid record without a lease: reported,
    // never counted as a host, and no obstacle to a switch.
    let h2_record = bed.etcd.etcdctl_ok(
        OPERATOR,
        &["get", &format!("{hosts_dir}h2"), "--print-value-only"],
    );
    let (evil, ghost) = (format!("{hosts_dir}evil"), format!("{hosts_dir}ghost"));
    bed.etcd.etcdctl_ok(OPERATOR, &["put", &evil, "{{{garbage"]);
    bed.etcd
        .etcdctl_ok(OPERATOR, &["put", &ghost, h2_record.trim_end()]);
    let status = bed.status();
    assert_eq!(live_hosts_in(&status), names, "{status:#}");
    let mut expected = vec![evil.clone(), ghost.clone()];
    expected.sort();
    assert_eq!(ignored(&status), expected, "{status:#}");
    let table = bed.fleet(&["status"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(
        table.stdout.contains(&format!("ignored {evil}")),
        "{table:?}"
    );
    assert!(
        table.stdout.contains("not attached to a lease"),
        "{table:?}"
    );
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("every live host (3)"), "{}", run.stdout);

    // Garbage in a service no host serves changes nothing.
    let unrelated = format!("{PREFIX}/v1/services/unrelated");
    bed.etcd
        .etcdctl_ok(OPERATOR, &["put", &unrelated, "not json"]);
    let run = bed.fleet(&["switch", "blue", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert_connected(&bed);

    // A desired state of web the hosts cannot read is refused by each,
    // visibly, and traffic stays; a fleet switch replaces it.
    assert_refused_everywhere(
        &bed,
        r#"{"schema_version":2,"color":"green","weight":100,"force_epoch":0,"previous":"blue","by":"future","at_unix_ms":0}"#,
        "schema version 2",
        "blue",
    );
    assert_refused_everywhere(
        &bed,
        r#"{"color":"purple","weight":100,"force_epoch":0,"previous":"blue","by":"x","at_unix_ms":0}"#,
        "purple",
        "blue",
    );
    assert_refused_everywhere(
        &bed,
        r#"{"color":"green","weight":200,"force_epoch":0,"previous":"blue","by":"x","at_unix_ms":0}"#,
        "weight 200",
        "blue",
    );
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("replacing it"), "{run:?}");
    for host in &bed.hosts {
        assert_eq!(host.get(), "green", "{}", host.name);
        let metrics = scrape(&host.fixture);
        assert_eq!(
            metric(
                &metrics,
                "bluegreen_fleet_desired_unreadable{service=\"web\"}"
            ),
            0.0,
            "{}",
            host.name
        );
    }

    // The twin refuses to start, names who holds h2, and leaves the fleet
    // and its own traffic as they were; `fleet status` shows the conflict.
    let refused = twin.refused_daemon(Duration::from_secs(LEASE_TTL_SECS + 12));
    assert_ne!(refused.code, 0, "{refused:?}");
    for needed in ["h2", "registered by another running daemon", "lease"] {
        assert!(refused.stderr.contains(needed), "{needed}: {refused:?}");
    }
    assert_eq!(twin.get(), "blue", "the twin moved its traffic");
    let status = bed.status();
    assert_eq!(live_hosts_in(&status), names, "{status:#}");
    assert_eq!(
        status["conflicts"][0]["conflict"]["host"], "h2",
        "{status:#}"
    );
    let table = bed.fleet(&["status"]);
    assert!(table.stdout.contains("CONFLICT"), "{table:?}");
    let run = bed.fleet(&["switch", "blue", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("every live host (3)"), "{}", run.stdout);
}
/// `fleet ARGS` with `tls` as its only TLS flags.
fn fleet_with(bed: &FleetBed, args: &[&str], tls: &[String]) -> CliRun {
    bed.bare_command(args)
        .args(["--etcd", &etcd_url(), "--prefix", PREFIX])
        .args(tls)
        .output()
        .unwrap_or_else(|error| panic!("cannot run bluegreen fleet {args:?}: {error}"))
        .into()
}

/// Issue 24, item 4: each TLS mistake is named, a missing file stops a
/// command or a daemon at once (its OS error said once), and an operator
/// needs no config file.
#[test]
fn tls_mistakes_are_named_and_a_missing_key_stops_the_daemon_at_start() {
    let mut bed = FleetBed::new(1);
    let pki = &bed.etcd.pki;
    pki.issue("expired", "ca", -1, "extendedKeyUsage=clientAuth\n");
    pki.other_ca("stranger-ca");
    pki.issue(
        "stranger",
        "stranger-ca",
        2,
        "extendedKeyUsage=clientAuth\n",
    );
    let file = |path: std::path::PathBuf| path.to_str().expect("utf-8").to_owned();
    let (ca, missing) = (file(pki.cert("ca")), file(pki.dir.join("missing.key")));
    let flags = |cacert: &str, cert: &str, key: &str| {
        vec![
            format!("--cacert={cacert}"),
            format!("--cert={}", file(pki.cert(cert))),
            format!("--key={key}"),
        ]
    };
    let cases = [
        (flags(&ca, "expired", &file(pki.key("expired"))), "expired"),
        (
            flags(&ca, "stranger", &file(pki.key("stranger"))),
            "etcd does not trust",
        ),
        (
            flags(
                &file(pki.cert("stranger-ca")),
                OPERATOR,
                &file(pki.key(OPERATOR)),
            ),
            "not signed by the CA",
        ),
        (
            flags(&ca, OPERATOR, &file(pki.key("root"))),
            "does not match",
        ),
        (vec![format!("--cacert={ca}")], "no client certificate"),
        (flags(&ca, OPERATOR, &missing), "missing.key"),
    ];
    for (tls, expected) in &cases {
        let started = Instant::now();
        let run = fleet_with(&bed, &["status"], tls);
        assert_eq!(run.code, 1, "{tls:?}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{tls:?}: wanted {expected}: {run:?}"
        );
        assert!(!run.stderr.contains("transport error"), "{tls:?}: {run:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{tls:?}: took {:?}",
            started.elapsed()
        );
    }
    let run = fleet_with(&bed, &["status"], &cases[5].0);
    assert_eq!(
        run.stderr.matches("No such file or directory").count(),
        1,
        "the OS error once: {run:?}"
    );
    // No config file on the operator's desk: the flags say it all; or a
    // config with the [fleet] section alone.
    let run = fleet_with(
        &bed,
        &["status", "--config", "/nonexistent/bluegreen.toml"],
        &bed.tls_flags(OPERATOR),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let desk = pki.dir.join("desk.toml");
    std::fs::write(
        &desk,
        format!(
            "[fleet]\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\nca = \"{ca}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            etcd_url(),
            file(pki.cert(OPERATOR)),
            file(pki.key(OPERATOR))
        ),
    )
    .expect("write the operator's config");
    let run: CliRun = bed
        .bare_command(&["status", "--config", &file(desk)])
        .output()
        .expect("run bluegreen fleet status")
        .into();
    assert_eq!(run.code, 0, "{run:?}");

    // A daemon whose key file is missing stops at start, saying so once.
    let key_line = format!(
        "ca = \"{ca}\"\ncert = \"{}\"\nkey = \"{missing}\"\n",
        file(pki.cert("h1"))
    );
    let host = &mut bed.hosts[0];
    host.configure(&bed.etcd.pki, "h1", &key_line);
    let refused = host.refused_daemon(Duration::from_secs(10));
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("missing.key"), "{refused:?}");
    assert_eq!(
        refused.stderr.matches("No such file or directory").count(),
        1,
        "{refused:?}"
    );
}

/// A file the test removes however it ends.
struct Marker(std::path::PathBuf);

impl Drop for Marker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Each host runs its own release gates before it applies a fleet switch:
/// one whose evaluation fails refuses, so the change is undone everywhere,
/// and the way back runs no gate. The daemon starts the commands as its own
/// children here (no systemd): under systemd they get a unit of their own.
#[test]
fn a_host_whose_release_gate_fails_refuses_and_the_undo_runs_no_gate() {
    let mut bed = FleetBed::new(2);
    let marker = Marker(std::env::temp_dir().join(format!("bg-fleet-gate-{}", std::process::id())));
    bed.hosts[0].add_service_tables(&format!(
        "\n[service.verify]\ncommands = [[\"/bin/sh\", \"-c\", \"echo $PPID $BLUEGREEN_COLOR >> {}\"]]\n",
        marker.0.display()
    ));
    bed.hosts[1].add_service_tables(
        "\n[service.verify]\ncommands = [[\"/bin/sh\", \"-c\", \"echo EVAL-FAILED-$((6*7)); exit 1\"]]\n",
    );
    bed.start();

    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 1, "{run:?}");
    for text in [
        "h2 refused",
        "green failed its commands gate",
        "was undone",
        "every live host is back on blue",
    ] {
        assert!(run.stderr.contains(text), "{text:?} in {}", run.stderr);
    }
    assert!(!run.stderr.contains("h1 refused"), "{}", run.stderr);
    for host in &bed.hosts {
        assert_eq!(host.get(), "blue", "{}", host.name);
    }
    let ran = std::fs::read_to_string(&marker.0).expect("h1's gate ran");
    assert_eq!(
        ran,
        format!("{} green\n", bed.hosts[0].daemon_pid()),
        "h1 gated green once, as the daemon's child, and went back to blue ungated"
    );
}

/// Each host scales its own idle color down after a fleet switch, by the
/// rules of one host, and `fleet status` shows where each color is.
#[test]
fn each_host_scales_its_idle_color_down_and_fleet_status_shows_it() {
    let mut bed = FleetBed::new(2);
    let marker =
        Marker(std::env::temp_dir().join(format!("bg-fleet-lifecycle-{}", std::process::id())));
    for host in &bed.hosts {
        host.add_service_tables(&format!(
            "\n[service.lifecycle]\nstart = [\"/bin/sh\", \"-c\", \"echo start $BLUEGREEN_COLOR >> {0}\"]\nstop = [\"/bin/sh\", \"-c\", \"echo {1} stop $BLUEGREEN_COLOR >> {0}\"]\nscale_down_after_secs = 1\n",
            marker.0.display(),
            host.name
        ));
    }
    bed.start();
    let run = bed.fleet(&["switch", "green", "--timeout", TIMEOUT]);
    assert_eq!(run.code, 0, "{run:?}");
    wait_status(&bed, "blue stopped on every host", |status| {
        status["hosts"].as_array().is_some_and(|hosts| {
            hosts.len() == 2
                && hosts.iter().all(|host| {
                    host["services"]["web"]["lifecycle"]
                        == serde_json::json!({"blue": "stopped", "green": "running"})
                })
        })
    });
    let mut stops: Vec<String> = std::fs::read_to_string(&marker.0)
        .expect("the stop commands ran")
        .lines()
        .map(str::to_owned)
        .collect();
    stops.sort();
    assert_eq!(stops, ["h1 stop blue", "h2 stop blue"]);
    let table = bed.fleet(&["status"]);
    assert!(table.stdout.contains("stopped"), "{}", table.stdout);
    for host in &bed.hosts {
        assert_eq!(host.get(), "green", "{}", host.name);
    }
}
