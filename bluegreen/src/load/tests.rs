use super::*;

#[test]
fn queue_depth_sums_the_metric_over_its_labels() {
    let text = "# HELP vllm:num_requests_waiting Requests waiting.\n\
                # TYPE vllm:num_requests_waiting gauge\n\
                vllm:num_requests_waiting{model_name=\"a:b\",engine=\"0\"} 3\n\
                vllm:num_requests_waiting{model_name=\"a:b\",engine=\"1\"} 4.5\n\
                vllm:num_requests_running{model_name=\"a:b\"} 9\n\
                other_total 2\n";
    assert_eq!(queue_depth(text, "vllm:num_requests_waiting"), Ok(7.5));
    assert_eq!(queue_depth(text, "other_total"), Ok(2.0));
    assert_eq!(
        queue_depth("vllm:num_requests_waiting 0\n", "vllm:num_requests_waiting"),
        Ok(0.0)
    );
}

#[test]
fn a_missing_or_negative_metric_is_an_error_not_an_idle_backend() {
    let error = queue_depth("up 1\n", "vllm:num_requests_waiting").unwrap_err();
    assert!(
        error.contains("no vllm:num_requests_waiting sample"),
        "{error}"
    );
    let error = queue_depth("queue -1\n", "queue").unwrap_err();
    assert!(error.contains("not a queue depth"), "{error}");
    assert!(queue_depth("", "queue").is_err());
}

#[test]
fn an_idle_backend_keeps_its_full_weight_and_a_queued_one_falls_to_the_floor() {
    assert_eq!(load_weight(1, 0.0), 10);
    assert_eq!(load_weight(3, 0.0), 30);
    assert_eq!(load_weight(1, 4.0), 5, "K queued halves the weight");
    assert_eq!(load_weight(2, 12.0), 5);
    assert_eq!(load_weight(1, 40.0), 1);
    assert_eq!(
        load_weight(5, 1e9),
        5,
        "never below a tenth of the full share"
    );
    assert_eq!(load_weight(100, 0.0), 1000);
    for queue in [0.0, 1.0, 2.5, 10.0, 100.0] {
        assert!(load_weight(4, queue) >= load_weight(4, queue + 1.0));
    }
}

#[test]
fn only_material_changes_rebuild_the_table() {
    assert!(!changed_materially(1, 10, 10));
    assert!(!changed_materially(1, 10, 8), "a fifth less is noise");
    assert!(changed_materially(1, 10, 7));
    assert!(changed_materially(1, 8, 10), "a quarter more");
    assert!(!changed_materially(10, 100, 120));
    assert!(changed_materially(10, 100, 125));
    assert!(changed_materially(10, 11, 10), "onto the floor");
    assert!(changed_materially(10, 10, 12), "off the floor");
}

#[test]
fn settings_are_checked_and_named() {
    assert_eq!(LoadCheck::default().validate(), Ok(()));
    let with = |change: fn(&mut LoadCheck)| {
        let mut check = LoadCheck::default();
        change(&mut check);
        check.validate().unwrap_err()
    };
    assert!(with(|check| check.metric = "a b".to_owned()).starts_with("metric"));
    assert!(with(|check| check.metric = "9lives".to_owned()).starts_with("metric"));
    assert!(with(|check| check.path = "metrics".to_owned()).starts_with("path"));
    assert!(with(|check| check.path = "/m\r\n".to_owned()).starts_with("path"));
    assert!(with(|check| check.port = Some(0)).starts_with("port 0"));
    assert!(with(|check| check.interval_ms = 99).starts_with("interval_ms 99"));
    assert!(with(|check| check.interval_ms = 60_001).starts_with("interval_ms"));
}
