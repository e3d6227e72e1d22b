//! The pod JSON the host hands the guest, made hostile: any value at any place in a real pod, or
//! no JSON at all. Translation answers a request or an error, never panics, and what it builds
//! stays proportional to what it was given.

use cube_provider::translate;
use proptest::prelude::*;
use serde_json::{Value, json};
use vk_provider_sdk::ResolvedPod;

const NODE: &str = "uk8s-abcd1234-vk-x7k2p";

fn config() -> String {
    json!({
        "region": "cn-bj2", "zone": "cn-bj2-05", "vpc_id": "uvnet-abc", "subnet_id": "subnet-def",
        "public_key": "pub", "private_key": "priv", "registries": ["myhub.an-link.com"],
    })
    .to_string()
}

fn everything() -> Value {
    let text = std::fs::read_to_string(format!("{}/tests/fixtures/pod-everything.yaml", env!("CARGO_MANIFEST_DIR")));
    serde_yaml_ng::from_str(&text.unwrap()).unwrap()
}

/// Any JSON value, a few levels deep, with strings that carry quotes, NULs, newlines, YAML syntax
/// and non-ASCII.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z0-9:/\"'\\\\\n\t\0{}\\[\\]&*!|>%@`#-]{0,40}".prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path (object keys and array indexes) of a JSON value.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => m.iter().for_each(|(k, c)| {
            here.push(k.clone());
            paths(c, here, out);
            here.pop();
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            here.push(i.to_string());
            paths(c, here, out);
            here.pop();
        }),
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], with: Value) {
    let mut at = v;
    for step in path {
        at = match at {
            Value::Object(m) => m.get_mut(step).unwrap(),
            Value::Array(a) => &mut a[step.parse::<usize>().unwrap()],
            _ => unreachable!("paths() only descends into containers"),
        };
    }
    *at = with;
}

fn translated_size(pod: &str) -> Option<usize> {
    translate(NODE, &config(), &ResolvedPod::from_pod_json(pod)).ok().map(|req| req.render().len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn any_value_anywhere_in_a_real_pod_is_translated_or_refused(
        picks in prop::collection::vec((any::<prop::sample::Index>(), any_value()), 1..4),
    ) {
        let mut pod = everything();
        for (pick, value) in picks {
            let mut all = Vec::new();
            paths(&pod, &mut Vec::new(), &mut all);
            let path = all[pick.index(all.len())].clone();
            replace_at(&mut pod, &path, value);
        }
        let text = pod.to_string();
        if let Some(size) = translated_size(&text) {
            prop_assert!(size <= 8 * text.len() + 64 * 1024, "{size} bytes from a {}-byte pod", text.len());
        }
    }

    #[test]
    fn any_text_as_the_pod_is_refused_without_a_panic(text in "\\PC{0,200}") {
        prop_assert!(translated_size(&text).is_none());
    }
}
