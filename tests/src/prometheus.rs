//! A real Prometheus server (Debian's `prometheus`) in a test's namespace,
//! scraping the test backends every 250 ms, stopped by its PID on drop
//! with its storage removed.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{fixture::TIMEOUT, http::KeepAlive, netns::Namespace};

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    address: SocketAddr,
    /// Its base URL, for an analysis's `prometheus`.
    pub url: String,
}

impl Prometheus {
    /// Starts a server on `listen` inside `namespace` scraping `targets`'
    /// `/metrics`; waits (at most 20 s) until it is ready.
    pub fn start(namespace: &Namespace, listen: SocketAddr, targets: &[SocketAddr]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "bg-prometheus-{}-{}",
            std::process::id(),
            listen.port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create Prometheus's directory");
        let targets: Vec<String> = targets.iter().map(|target| format!("'{target}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 200ms\nscrape_configs:\n  - job_name: backends\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.join("log")).expect("create Prometheus's log");
        let mut command: Command = namespace.command("prometheus");
        command
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(log);
        let child = command
            .spawn()
            .expect("start prometheus (cargo xtask setup installs it)");
        let prometheus = Prometheus {
            child,
            dir,
            address: listen,
            url: format!("http://{listen}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !prometheus.ready(namespace) {
            assert!(
                Instant::now() < deadline,
                "Prometheus was not ready within 20 s: {}",
                std::fs::read_to_string(prometheus.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    fn ready(&self, namespace: &Namespace) -> bool {
        self.get(namespace, "/-/ready").is_ok()
    }

    /// `GET path` from inside `namespace`: the body of a 200 answer.
    fn get(&self, namespace: &Namespace, path: &str) -> Result<String, String> {
        let (address, path) = (self.address, path.to_owned());
        namespace
            .spawn(move || {
                KeepAlive::connect(address, TIMEOUT)
                    .and_then(|mut connection| connection.get_path(&path))
                    .map_err(|error| format!("GET {path}: {error}"))
            })
            .join()
            .expect("Prometheus client thread")
    }

    /// The value `query` gives now (a scalar or one series), or why none.
    pub fn value(&self, namespace: &Namespace, query: &str) -> Result<f64, String> {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(byte).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect();
        let body = self.get(namespace, &format!("/api/v1/query?query={encoded}"))?;
        let answer: serde_json::Value =
            serde_json::from_str(&body).map_err(|error| format!("not JSON ({error}): {body}"))?;
        let result = &answer["data"]["result"];
        let value = match answer["data"]["resultType"].as_str() {
            Some("scalar") => &result[1],
            _ => &result[0]["value"][1],
        };
        value
            .as_str()
            .and_then(|value| value.parse().ok())
            .filter(|value: &f64| value.is_finite())
            .ok_or_else(|| format!("no value: {answer}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
