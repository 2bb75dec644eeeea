//! Pools as the config file and `up --blue` write them, and where each
//! mistake is blamed.

use crate::{
    config::{Config, PoolSpec},
    error::Error,
};

fn service(blue: &str, extra: &str) -> String {
    format!(
        "[[service]]\nname = \"chat\"\nvip = \"10.0.0.1:8080\"\nblue = {blue}\ngreen = \"10.1.0.9:8080\"\n{extra}"
    )
}

fn blue_pool(blue: &str) -> PoolSpec {
    let config = Config::parse(&service(blue, ""), "test.toml")
        .unwrap_or_else(|error| panic!("{blue}: {error}"));
    config.services[0].blue.clone()
}

/// Line, field and message of a config that must be refused.
fn refused(blue: &str, extra: &str) -> (usize, String, String) {
    match Config::parse(&service(blue, extra), "test.toml") {
        Err(Error::Config {
            line,
            field,
            message,
            ..
        }) => (line, field, message),
        other => panic!("{blue}: expected a config error, got {other:?}"),
    }
}

use crate::pool::test_backend as backend;

#[test]
fn a_pool_is_one_address_a_list_or_a_list_of_tables() {
    assert_eq!(
        blue_pool("\"10.1.0.2:8080\"").backends(),
        [backend("10.1.0.2:8080", 1)]
    );
    assert_eq!(
        blue_pool("[\"10.1.0.2:8080\", \"10.1.0.3:8080\"]").backends(),
        [backend("10.1.0.2:8080", 1), backend("10.1.0.3:8080", 1)]
    );
    let tables = blue_pool(
        "[\n  { addr = \"10.1.0.2:8080\", weight = 3 },\n  { addr = \"10.1.0.3:8080\" },\n  \"10.1.0.4:8080\",\n]",
    );
    assert_eq!(
        tables.backends(),
        [
            backend("10.1.0.2:8080", 3),
            backend("10.1.0.3:8080", 1),
            backend("10.1.0.4:8080", 1)
        ]
    );
    assert_eq!(
        tables.weighted()[0],
        ("10.1.0.2:8080".parse().expect("literal"), 3)
    );
    assert_eq!(
        tables.to_string(),
        "10.1.0.2:8080 (weight 3), 10.1.0.3:8080, 10.1.0.4:8080"
    );
}

#[test]
fn a_drained_backend_has_weight_zero_in_the_table_only() {
    let mut pool = blue_pool("[{ addr = \"10.1.0.2:8080\", weight = 4 }, \"10.1.0.3:8080\"]");
    pool.backends_mut()[0].drained = true;
    assert_eq!(pool.weighted()[0].1, 0);
    assert_eq!(pool.backends()[0].weight, 4);
    assert_eq!(pool.serving(), ["10.1.0.3:8080".parse().expect("literal")]);
    assert_eq!(pool.to_string(), "10.1.0.2:8080 (drained), 10.1.0.3:8080");
}

#[test]
fn health_exclusions_zero_the_weight_but_never_empty_the_pool() {
    let mut pool = blue_pool("[\"10.1.0.2:8080\", \"10.1.0.3:8080\", \"10.1.0.4:8080\"]");
    let addrs: Vec<std::net::SocketAddr> = pool.addrs().collect();
    let excluded = pool.with_health(|backend| backend.addr == addrs[1]);
    assert_eq!(
        excluded
            .weighted()
            .iter()
            .map(|(_, weight)| *weight)
            .collect::<Vec<_>>(),
        [1, 0, 1]
    );
    assert!(excluded.backends()[1].unhealthy);
    assert_eq!(
        excluded.backends()[1].weight,
        1,
        "the operator's weight is kept"
    );
    assert_eq!(
        excluded.to_string(),
        "10.1.0.2:8080, 10.1.0.3:8080 (unhealthy), 10.1.0.4:8080"
    );
    // Healthy again: back in.
    assert_eq!(excluded.with_health(|_| false), pool);
    // Every backend unhealthy: the table stays as it was.
    assert_eq!(excluded.with_health(|_| true), excluded);
    // The operator drained the last healthy one: health lifts its
    // exclusions rather than leave no backend.
    pool.backends_mut()[0].drained = true;
    pool.backends_mut()[2].drained = true;
    let stranded = pool.with_health(|backend| backend.addr == addrs[1]);
    assert!(!stranded.backends()[1].unhealthy);
    assert!(stranded.takes_new_flows());
}

#[test]
fn pool_mistakes_name_the_line_the_field_and_the_backend() {
    let cases = [
        ("[]", "", "an empty pool"),
        (
            "[\"10.1.0.2:8080\", \"10.1.0.2:8080\"]",
            "",
            "10.1.0.2:8080 is listed twice",
        ),
        (
            "[\"10.1.0.2:8080\", \"10.0.0.1:8080\"]",
            "",
            "cannot be the VIP",
        ),
        ("[\"10.1.0.2:8080\", \"[fd00::2]:8080\"]", "", "IPv6"),
        ("[\"127.0.0.1:8080\"]", "", "loopback"),
        (
            "[{ addr = \"10.1.0.2:8080\", weight = 0 }]",
            "",
            "weight 0 is outside 1..=100",
        ),
        (
            "[{ addr = \"10.1.0.2:8080\", weight = 101 }]",
            "",
            "weight 101 is outside 1..=100",
        ),
        (
            "[{ addr = \"10.1.0.2:8080\", wieght = 2 }]",
            "",
            "unknown key \"wieght\"",
        ),
        ("[{ weight = 2 }]", "", "backend 1: addr is missing"),
        (
            "[\"10.1.0.2:8080\", \"10.1.0.3\"]",
            "",
            "backend 2: invalid",
        ),
        ("8080", "", "expected \"ADDR:PORT\", a list of them"),
    ];
    for (blue, extra, expected) in cases {
        let (line, field, message) = refused(blue, extra);
        assert_eq!((line, field.as_str()), (4, "service[0].blue"), "{blue}");
        assert!(message.contains(expected), "{blue}: {message}");
    }

    let too_many: Vec<String> = (0..257)
        .map(|index| format!("\"10.1.{}.{}:8080\"", 1 + index / 200, 1 + index % 200))
        .collect();
    let (_, field, message) = refused(&format!("[{}]", too_many.join(", ")), "");
    assert_eq!(field, "service[0].blue");
    assert!(message.contains("257 backends, at most 256"), "{message}");

    // The same backend in both colors is blamed on green.
    let (line, field, message) = refused("[\"10.1.0.2:8080\", \"10.1.0.9:8080\"]", "");
    assert_eq!((line, field.as_str()), (5, "service[0].green"));
    assert!(message.contains("10.1.0.9:8080 is in both"), "{message}");
}

#[test]
fn min_healthy_cannot_exceed_the_smaller_pool() {
    let health = |min: u32| format!("\n[service.health]\nkind = \"tcp\"\nmin_healthy = {min}\n");
    let two = "[\"10.1.0.2:8080\", \"10.1.0.3:8080\"]";
    let config = Config::parse(&service(two, ""), "test.toml").expect("valid");
    assert_eq!(config.services[0].health, None);
    // Green has one backend.
    let (_, field, message) = refused(two, &health(2));
    assert_eq!(field, "service[0].health");
    assert!(
        message.contains("min_healthy 2 is more than the 1"),
        "{message}"
    );
    let (_, _, message) = refused(two, &health(0));
    assert!(message.contains("min_healthy 0 is outside"), "{message}");
    let config = Config::parse(&service(two, &health(1)), "test.toml").expect("valid");
    let check = config.services[0].health.as_ref().expect("a check");
    assert_eq!(check.min_healthy, 1);
}

#[test]
fn up_flags_take_comma_separated_pools() {
    let pool: PoolSpec = "10.1.0.2:8080,10.1.0.3:8080".parse().expect("valid");
    assert_eq!(pool.addrs().count(), 2);
    let v6: PoolSpec = "[fd00::2]:80, [fd00::3]:80".parse().expect("valid");
    assert_eq!(v6.first(), "[fd00::2]:80".parse().expect("literal"));
    let error = "10.1.0.2:8080,fd00::3:80"
        .parse::<PoolSpec>()
        .expect_err("unbracketed IPv6");
    assert!(error.to_string().contains("brackets"), "{error}");
}

#[test]
fn load_weights_are_runtime_state_in_tenths_beside_the_operators_weights() {
    let pool = PoolSpec::new(vec![
        backend("10.1.0.2:80", 2),
        backend("10.1.0.3:80", 1),
        backend("10.1.0.4:80", 1),
    ]);
    let unweighed: Vec<u32> = pool.weighted().iter().map(|(_, weight)| *weight).collect();
    assert_eq!(
        unweighed,
        [2, 1, 1],
        "no load weight: the operator's as before"
    );
    let mut weighed = pool.with_load(
        |backend| (backend.addr.port() == 80 && backend.weight == 2).then_some(3),
        |backend| backend.weight == 2,
    );
    weighed.backends_mut()[2].drained = true;
    let weights: Vec<u32> = weighed
        .weighted()
        .iter()
        .map(|(_, weight)| *weight)
        .collect();
    assert_eq!(
        weights,
        [3, 10, 0],
        "an unscraped backend keeps its full share; a drain wins"
    );
    assert_eq!(
        weighed.backends()[0].weight,
        2,
        "the operator's weight stays"
    );
    let mut reloaded = pool.clone();
    reloaded.keep_runtime_state(&weighed);
    assert_eq!(reloaded.backends()[0].load_weight, Some(3));
    assert!(
        reloaded.backends()[0].load_unreadable,
        "a reload keeps that its load could not be read"
    );
    assert_eq!(
        reloaded.to_string(),
        "10.1.0.2:80 (weight 2) (load weight 3/10) (load unreadable), 10.1.0.3:80, 10.1.0.4:80 (drained)"
    );
    let lifted = reloaded.with_load(|_| None, |_| false);
    assert!(!lifted.backends()[0].load_unreadable);
    assert_eq!(
        lifted.weighted(),
        [
            (lifted.backends()[0].addr, 2),
            (lifted.backends()[1].addr, 1),
            (lifted.backends()[2].addr, 0)
        ],
        "lifted when the load section goes"
    );
    assert!(
        weighed.to_string().contains("(load weight 3/10)"),
        "{weighed}"
    );
}
