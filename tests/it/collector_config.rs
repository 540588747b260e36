//! `otel-collector.yaml`, read as the collector reads it: every component a pipeline names is
//! defined, memory_limiter comes first, receivers bind the intended loopback addresses, and the
//! rules that keep patient data out of the backend are present.

use serde_yaml::Value;

fn config() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/otel-collector.yaml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).expect("valid YAML")
}

fn names(list: &Value) -> Vec<String> {
    list.as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_pipeline_component_is_defined_and_memory_limiter_comes_first() {
    let config = config();
    let pipelines = config["service"]["pipelines"].as_mapping().unwrap();
    assert!(!pipelines.is_empty());
    for (name, pipeline) in pipelines {
        for kind in ["receivers", "processors", "exporters"] {
            for component in names(&pipeline[kind]) {
                assert!(
                    config[kind].get(component.as_str()).is_some(),
                    "{name:?}: {kind} {component} undefined"
                );
            }
        }
        assert_eq!(
            names(&pipeline["processors"])[0],
            "memory_limiter",
            "{name:?}"
        );
    }
}

#[test]
fn receivers_bind_the_intended_loopback_addresses() {
    let protocols = &config()["receivers"]["otlp"]["protocols"];
    assert_eq!(
        protocols["grpc"]["endpoint"].as_str(),
        Some("127.0.0.1:4317")
    );
    assert_eq!(
        protocols["http"]["endpoint"].as_str(),
        Some("127.0.0.1:4318")
    );
}

#[test]
fn query_strings_are_removed_and_kafka_keys_hashed() {
    let actions = config()["processors"]["attributes/redact"]["actions"]
        .as_sequence()
        .unwrap()
        .clone();
    let has = |key: &str, action: &str| {
        actions
            .iter()
            .any(|a| a["key"].as_str() == Some(key) && a["action"].as_str() == Some(action))
    };
    assert!(has("url.query", "delete"));
    assert!(has("url.full", "delete"));
    assert!(has("messaging.kafka.message.key", "hash"));
}
