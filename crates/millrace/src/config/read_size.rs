//! The read-size settings of [`ConsumerOptions`]: `count` as a number or `"adaptive"` in files and
//! the environment, and the checks of `count`, `batch_target`, `min_count` and `max_count`.

use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

use super::ConsumerOptions;

/// The largest `COUNT` accepted, fixed or adaptive.
pub(crate) const MAX_COUNT: usize = 100_000;
/// The longest `batch_target` accepted.
const MAX_BATCH_TARGET: Duration = Duration::from_secs(60);

/// The word that stands for an unset `count` in files and the environment.
const ADAPTIVE: &str = "adaptive";

/// A refused read-size setting: the field and why.
pub(super) type Refusal = (&'static str, String);

/// Checks `count`, `batch_target`, `min_count` and `max_count`.
pub(super) fn check(o: &ConsumerOptions) -> Result<(), Refusal> {
    let refuse = |field, reason: &str| Err((field, reason.to_owned()));
    match o.count {
        Some(0) => {
            return refuse(
                "count",
                "must be at least 1 (Redis reads COUNT 0 as \"no limit\"); leave it unset (or write \"adaptive\") for a read size that adapts",
            )
        }
        Some(n) if n > MAX_COUNT => return refuse("count", "must be at most 100000"),
        _ => {}
    }
    if o.batch_target < Duration::from_millis(1) {
        return refuse("batch_target", "must be at least 1ms");
    }
    if o.batch_target > MAX_BATCH_TARGET {
        return refuse(
            "batch_target",
            "must be at most 1m (entries fetched ahead wait that long; keep it well below claim_min_idle)",
        );
    }
    if o.min_count == 0 {
        return refuse("min_count", "must be at least 1");
    }
    if o.max_count > MAX_COUNT {
        return refuse("max_count", "must be at most 100000");
    }
    if o.min_count > o.max_count {
        return Err((
            "min_count",
            format!(
                "must not exceed `max_count` ({} > {})",
                o.min_count, o.max_count
            ),
        ));
    }
    Ok(())
}

/// `count`: a number of entries, or unset (`"adaptive"` in a file or the environment).
pub(super) mod count {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(
        count: &Option<usize>,
        s: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        match count {
            Some(n) => s.serialize_some(n),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<Option<usize>, D::Error> {
        d.deserialize_any(CountVisitor)
    }

    struct CountVisitor;

    impl<'de> Visitor<'de> for CountVisitor {
        type Value = Option<usize>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a number of entries, or \"{ADAPTIVE}\"")
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> std::result::Result<Self::Value, E> {
            usize::try_from(n)
                .map(Some)
                .map_err(|_| E::custom("count must be at most 100000"))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> std::result::Result<Self::Value, E> {
            u64::try_from(n)
                .map_err(|_| {
                    E::custom(format!(
                        "count must be a positive number of entries, or \"{ADAPTIVE}\"; got {n}"
                    ))
                })
                .and_then(|n| self.visit_u64(n))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
            let text = text.trim();
            if text.eq_ignore_ascii_case(ADAPTIVE) {
                return Ok(None);
            }
            match text.parse::<u64>() {
                Ok(n) => self.visit_u64(n),
                Err(_) => Err(E::custom(format!(
                    "count must be a number of entries, or \"{ADAPTIVE}\" for a read size that adapts; got `{text}`"
                ))),
            }
        }

        fn visit_none<E: de::Error>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_any(CountVisitor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn refusal(o: &ConsumerOptions) -> (String, String) {
        match o.validate(None) {
            Err(Error::Config { field, reason, .. }) => (field, reason),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn parsed(text: &str) -> Result<ConsumerOptions, String> {
        toml::from_str::<ConsumerOptions>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn count_is_a_number_or_adaptive() {
        assert_eq!(parsed("count = 250").unwrap().count, Some(250));
        assert_eq!(parsed("count = \"250\"").unwrap().count, Some(250));
        assert_eq!(parsed("count = \"adaptive\"").unwrap().count, None);
        assert_eq!(parsed("count = \"Adaptive\"").unwrap().count, None);
        assert_eq!(parsed("").unwrap().count, None);
        for bad in [
            "count = -5",
            "count = \"lots\"",
            "count = 1.5",
            "count = true",
        ] {
            let err = parsed(bad).unwrap_err();
            assert!(err.contains("count"), "{bad}: {err}");
        }
        let err = parsed("count = \"lots\"").unwrap_err();
        assert!(err.contains("adaptive"), "{err}");
    }

    #[test]
    fn fixed_and_adaptive_round_trip_through_serde() {
        for o in [
            ConsumerOptions::default(),
            ConsumerOptions {
                count: Some(42),
                batch_target: Duration::from_millis(250),
                min_count: 2,
                max_count: 300,
                ..Default::default()
            },
        ] {
            let text = toml::to_string(&o).unwrap();
            assert_eq!(
                toml::from_str::<ConsumerOptions>(&text).unwrap(),
                o,
                "{text}"
            );
        }
    }

    #[test]
    fn bad_read_sizes_are_refused_with_the_field_and_what_to_do() {
        let with = |f: &dyn Fn(&mut ConsumerOptions)| {
            let mut o = ConsumerOptions::default();
            f(&mut o);
            refusal(&o)
        };
        let (field, reason) = with(&|o| o.count = Some(0));
        assert_eq!(field, "count");
        assert!(reason.contains("adaptive"), "{reason}");
        assert_eq!(with(&|o| o.count = Some(MAX_COUNT + 1)).0, "count");
        assert_eq!(with(&|o| o.batch_target = Duration::ZERO).0, "batch_target");
        assert_eq!(
            with(&|o| o.batch_target = Duration::from_secs(61)).0,
            "batch_target"
        );
        assert_eq!(with(&|o| o.min_count = 0).0, "min_count");
        assert_eq!(with(&|o| o.max_count = MAX_COUNT + 1).0, "max_count");
        let (field, reason) = with(&|o| {
            o.min_count = 500;
            o.max_count = 100;
        });
        assert_eq!(field, "min_count");
        assert!(reason.contains("500 > 100"), "{reason}");
    }

    #[test]
    fn a_fixed_count_or_max_count_is_the_largest_batch() {
        let mut o = ConsumerOptions::default();
        assert_eq!(o.largest_count(), 1000);
        o.count = Some(7);
        assert_eq!(o.largest_count(), 7);
    }
}
