//! Scraping a test daemon's Prometheus endpoint, which it serves inside the
//! topology's switch namespace.

use std::collections::BTreeMap;

use crate::{
    fixture::{Fixture, TIMEOUT},
    http::KeepAlive,
};

/// Where the tests' daemons serve metrics (`--metrics=127.0.0.1:9464`).
pub const METRICS: &str = "127.0.0.1:9464";

/// Waits (at most 10 s) until a daemon just started serves its metrics:
/// `status` answers before its endpoint listens.
pub fn wait_for_endpoint(fixture: &Fixture) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listening = fixture
            .topology
            .switch
            .spawn(|| {
                std::net::TcpStream::connect_timeout(&METRICS.parse().expect("literal"), TIMEOUT)
                    .is_ok()
            })
            .join()
            .expect("connect thread");
        if listening {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon serves no metrics on {METRICS} after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The daemon's OpenMetrics text.
pub fn scrape_text(fixture: &Fixture) -> String {
    let text = fixture
        .topology
        .switch
        .spawn(|| {
            KeepAlive::connect(METRICS.parse().expect("literal"), TIMEOUT)
                .and_then(|mut connection| connection.get_path("/metrics"))
                .expect("scrape /metrics")
        })
        .join()
        .expect("scrape thread");
    // Also tells a full exposition from an error body.
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {text}"
    );
    text
}

/// The daemon's samples: `name{labels}` -> value.
pub fn scrape(fixture: &Fixture) -> BTreeMap<String, f64> {
    scrape_text(fixture)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| {
            let (name, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {line:?}"));
            (
                name.to_owned(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value in {line:?}")),
            )
        })
        .collect()
}

/// One sample of a scrape, which must be there.
pub fn metric(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    *metrics.get(name).unwrap_or_else(|| {
        panic!(
            "{name} missing from {:#?}",
            metrics.keys().collect::<Vec<_>>()
        )
    })
}
