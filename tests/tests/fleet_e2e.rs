//! The fleet end to end: a real etcd, three hosts each with its own daemon,
//! and `bluegreen fleet` switching them all or none.

use std::time::{Duration, Instant};

use bluegreen_testbed::{
    fleet::{FleetBed, FleetHost, LEASE_TTL_SECS},
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
    let first: bluegreen_testbed::cli::CliRun =
        first.wait_with_output().expect("first fleet switch").into();

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
