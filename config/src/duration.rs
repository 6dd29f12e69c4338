//! Durations from input (YAML values and command-line flags): humantime text, checked in one
//! place against the longest timer ringlb can keep.

use std::time::Duration;

/// The longest duration ringlb accepts anywhere: 100 years (`100y`, humantime's years of
/// 365.25 days).
///
/// Every timeout ends up on a clock: monoio's timer counts milliseconds since its runtime
/// started in a `u64` (`Duration too far into the future` panics beyond about 584 million
/// years), `std::time::Instant + Duration` panics when the sum overflows, and tokio's timer
/// clamps. A bound this far beyond any real timeout, and this far within all three, turns a
/// typo such as `1000000000y` into an error at start instead of a panic in every worker.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 31_557_600);

/// How [`MAX_DURATION`] reads in messages.
const MAX_DURATION_TEXT: &str = "100y";

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Not humantime text.
    #[error("{given:?} is not a duration such as 500ms, 5s or 1h: {reason}")]
    Syntax {
        /// The text as given.
        given: String,
        /// What humantime found wrong with it.
        reason: humantime::DurationError,
    },
    /// Zero where only a positive duration makes sense.
    #[error("must be greater than zero")]
    Zero,
    /// Longer than the limit of its use.
    #[error("{given:?} is longer than {}, {why}", limit_text(*.limit))]
    TooLong {
        /// The text as given.
        given: String,
        /// The longest accepted.
        limit: Duration,
        /// Why that is the limit.
        why: &'static str,
    },
}

/// Parses humantime text (`500ms`, `5s`, `1h 30m`, `0`) of at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    parse_duration_at_most(text, MAX_DURATION, "the longest timer ringlb keeps")
}

/// As [`parse_duration`], refusing zero (a timeout of nothing).
pub fn parse_positive_duration(text: &str) -> Result<Duration, DurationError> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(DurationError::Zero),
        d => Ok(d),
    }
}

/// As [`parse_duration`], for a use whose sensible longest value is `limit` (at most
/// [`MAX_DURATION`]); `why` ends the error message, e.g. `"the longest timer ringlb keeps"`.
pub fn parse_duration_at_most(
    text: &str,
    limit: Duration,
    why: &'static str,
) -> Result<Duration, DurationError> {
    let limit = limit.min(MAX_DURATION);
    match humantime::parse_duration(text.trim()) {
        Ok(d) if d <= limit => Ok(d),
        Ok(_) => Err(DurationError::TooLong {
            given: text.to_owned(),
            limit,
            why,
        }),
        Err(reason) => Err(DurationError::Syntax {
            given: text.to_owned(),
            reason,
        }),
    }
}

fn limit_text(limit: Duration) -> String {
    if limit == MAX_DURATION {
        MAX_DURATION_TEXT.to_owned()
    } else {
        humantime::format_duration(limit).to_string()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_limit_is_accepted_and_a_second_more_is_not() {
        assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
        let over = humantime::format_duration(MAX_DURATION + Duration::from_secs(1)).to_string();
        assert_eq!(
            parse_duration(&over).unwrap_err().to_string(),
            format!("{over:?} is longer than 100y, the longest timer ringlb keeps")
        );
        // humantime's year is 365.25 days.
        assert_eq!(parse_duration("36525d"), Ok(MAX_DURATION));
        assert!(parse_duration("36526d").is_err());
    }

    #[test]
    fn zero_syntax_and_use_limits_have_their_own_reasons() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_positive_duration("0s"), Err(DurationError::Zero));
        assert_eq!(parse_positive_duration(" 5s "), Ok(Duration::from_secs(5)));
        let err = parse_duration("5 parsecs").unwrap_err().to_string();
        assert!(
            err.starts_with("\"5 parsecs\" is not a duration such as 500ms, 5s or 1h: "),
            "{err}"
        );
        let spin = "the longest a worker may spin";
        let second = Duration::from_secs(1);
        assert_eq!(parse_duration_at_most("1s", second, spin), Ok(second));
        assert_eq!(
            parse_duration_at_most("1001ms", second, spin)
                .unwrap_err()
                .to_string(),
            "\"1001ms\" is longer than 1s, the longest a worker may spin"
        );
    }

    /// What every accepted duration must allow: a deadline on std's clock (monoio's timer is
    /// checked in proxy-core, which has the runtime).
    fn fits_the_clock(d: Duration) {
        assert!(d <= MAX_DURATION, "{d:?}");
        assert!(Instant::now().checked_add(d).is_some(), "{d:?}");
    }

    /// Text built from numbers and humantime's units, one to three parts.
    fn duration_text() -> impl Strategy<Value = String> {
        let number = prop_oneof![0u64..1000, 0u64..100_000_000, any::<u64>()];
        let unit = prop::sample::select(vec![
            "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "years", "",
        ]);
        prop::collection::vec((number, unit), 1..=3).prop_map(|parts| {
            parts
                .iter()
                .map(|(n, u)| format!("{n}{u}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_duration_is_refused_or_fits_the_clock(
            secs in prop_oneof![0..=MAX_DURATION.as_secs() + 10, any::<u64>()],
            nanos in 0u32..1_000_000_000,
        ) {
            let d = Duration::new(secs, nanos);
            let text = humantime::format_duration(d).to_string();
            match parse_duration(&text) {
                Ok(parsed) => {
                    prop_assert_eq!(parsed, d, "{}", text);
                    fits_the_clock(parsed);
                }
                Err(e) => prop_assert!(d > MAX_DURATION, "{text}: {e}"),
            }
        }

        #[test]
        fn any_duration_text_is_refused_or_fits_the_clock(text in duration_text()) {
            if let Ok(d) = parse_duration(&text) {
                fits_the_clock(d);
            }
        }
    }
}
