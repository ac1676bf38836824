//! Every request validator of the gRPC layer at scale (proptest, 10,000 cases each): no input
//! panics one, every refusal is INVALID_ARGUMENT naming its field, and every accepted input
//! round-trips (the domain value prints back to exactly the input: ids are canonical).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use proptest::prelude::*;
use sandboxd_server::convert;
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn assert_names(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status.get_details_bad_request().expect("BadRequest detail");
    assert_eq!(bad_request.field_violations[0].field, field);
}

/// Strings near UUIDs: canonical ones with a character changed, upper case, braces, no hyphens,
/// plus arbitrary text.
fn uuid_like() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).hyphenated().to_string()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n)
            .hyphenated()
            .to_string()
            .to_uppercase()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).simple().to_string()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).braced().to_string()),
        any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).urn().to_string()),
        (any::<u128>(), 0..36usize, any::<char>()).prop_map(|(n, at, ch)| {
            let mut chars: Vec<char> = uuid::Uuid::from_u128(n)
                .hyphenated()
                .to_string()
                .chars()
                .collect();
            chars[at] = ch;
            chars.into_iter().collect()
        }),
        ".{0,64}",
    ]
}

fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "(/[a-zA-Z0-9._ -]{0,12}){0,6}",
        "(/(\\.|\\.\\.|[a-z]{1,3}|)){0,6}/?",
        "[a-z./]{0,20}",
        ".{0,64}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn chat_ids_are_refused_or_canonical(raw in uuid_like()) {
        match convert::chat_id(&raw) {
            Ok(id) => prop_assert_eq!(id.to_string(), raw),
            Err(status) => assert_names(&status, "chat_id"),
        }
    }

    #[test]
    fn agent_ids_are_refused_or_round_trip(raw in prop_oneof!["[a-z0-9._-]{0,70}", ".{0,40}"]) {
        match convert::agent_id(&raw) {
            Ok(id) => prop_assert_eq!(id.as_str(), raw.as_str()),
            Err(status) => assert_names(&status, "agent_id"),
        }
        match convert::agent_filter(&raw) {
            Ok(None) => prop_assert!(raw.is_empty()),
            Ok(Some(id)) => prop_assert_eq!(id.as_str(), raw.as_str()),
            Err(status) => assert_names(&status, "agent_id"),
        }
    }

    #[test]
    fn volume_paths_are_refused_or_round_trip(raw in path_like()) {
        match convert::volume_host_path(&raw) {
            Ok(path) => {
                prop_assert_eq!(path.as_str(), raw.as_str());
                prop_assert!(raw.starts_with('/'));
                prop_assert!(!raw.split('/').any(|part| part == ".."));
                prop_assert!(!raw.chars().any(char::is_control));
            }
            Err(status) => assert_names(&status, "volume_host_path"),
        }
    }

    #[test]
    fn page_sizes_are_refused_or_in_range(raw in any::<i32>()) {
        match convert::page_size(raw) {
            Ok(size) => {
                prop_assert!((1..=convert::MAX_PAGE_SIZE).contains(&size));
                prop_assert_eq!(size, if raw == 0 { convert::DEFAULT_PAGE_SIZE } else { usize::try_from(raw).unwrap() });
            }
            Err(status) => assert_names(&status, "page_size"),
        }
    }

    #[test]
    fn page_tokens_pass_through_unchanged(raw in ".{0,64}") {
        match convert::page_token(raw.clone()) {
            Some(token) => prop_assert_eq!(token, raw),
            None => prop_assert!(raw.is_empty()),
        }
    }

    #[test]
    fn ttls_are_refused_or_round_trip(
        seconds in prop_oneof![any::<i64>(), -5..100_000i64],
        nanos in prop_oneof![any::<i32>(), -1_000_000_000..1_000_000_000i32],
    ) {
        let raw = prost_types::Duration { seconds, nanos };
        match convert::ttl(Some(raw)) {
            Ok(Some(ttl)) => {
                prop_assert!(!ttl.is_zero());
                let back = prost_types::Duration::try_from(ttl).unwrap();
                prop_assert_eq!(back, raw);
            }
            Ok(None) => prop_assert!(false, "a set ttl cannot become unset"),
            Err(status) => assert_names(&status, "ttl"),
        }
    }
}

#[test]
fn an_unset_ttl_means_the_default() {
    assert_eq!(convert::ttl(None).unwrap(), None);
    assert_eq!(
        convert::ttl(Some(prost_types::Duration {
            seconds: 1,
            nanos: 0
        }))
        .unwrap(),
        Some(Duration::from_secs(1))
    );
}
