//! Every duration the config parser accepts can be a timer on a worker's runtime. monoio's
//! timer counts milliseconds since its runtime started in a `u64` and panics ("Duration too
//! far into the future") beyond that; `std::time::Instant + Duration` panics on overflow.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use config::{parse_duration, MAX_DURATION};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseResult, TestRunner};

type Runtime = monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>>;

fn runtime() -> Runtime {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("runtime")
}

/// Arms timers of `d` the ways the data plane does (a sleep, a deadline on std's clock as the
/// idle sweepers keep, a timeout as connects use) and polls each once: none may panic, and a
/// timer of a second or more must still be pending (not wrapped around to fire at once).
fn arm(rt: &mut Runtime, d: Duration) {
    let deadline = Instant::now().checked_add(d).expect("fits std's clock");
    rt.block_on(async move {
        let mut sleep = pin!(monoio::time::sleep(d));
        let until = monoio::time::Instant::from_std(deadline);
        let mut sleep_until = pin!(monoio::time::sleep_until(until));
        let mut timeout = pin!(monoio::time::timeout(d, std::future::pending::<()>()));
        poll_fn(|cx| {
            let pending = [
                sleep.as_mut().poll(cx).is_pending(),
                sleep_until.as_mut().poll(cx).is_pending(),
                timeout.as_mut().poll(cx).is_pending(),
            ];
            if d >= Duration::from_secs(1) {
                assert_eq!(pending, [true; 3], "{d:?}");
            }
            Poll::Ready(())
        })
        .await;
    });
}

#[test]
fn the_longest_accepted_duration_is_a_timer_and_a_second_more_is_refused() {
    assert_eq!(parse_duration("100y"), Ok(MAX_DURATION));
    arm(&mut runtime(), MAX_DURATION);
    assert!(parse_duration("100y 1s").is_err());
}

/// Text built from numbers and humantime's units, one to three parts.
fn duration_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![0u64..1000, 0u64..100_000_000, any::<u64>()];
    let unit = prop::sample::select(vec![
        "ns", "us", "ms", "s", "m", "h", "d", "w", "M", "y", "years",
    ]);
    prop::collection::vec((number, unit), 1..=3).prop_map(|parts| {
        parts
            .iter()
            .map(|(n, u)| format!("{n}{u}"))
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// Runs `check` on 256 values of `strategy` with one runtime for them all.
fn for_cases<S: Strategy>(strategy: S, check: impl Fn(&mut Runtime, S::Value) -> TestCaseResult) {
    let rt = RefCell::new(runtime());
    let mut runner = TestRunner::new(ProptestConfig::with_cases(256));
    let result = runner.run(&strategy, |value| check(&mut rt.borrow_mut(), value));
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn any_accepted_duration_is_a_timer() {
    let secs = prop_oneof![0..=MAX_DURATION.as_secs() + 10, any::<u64>()];
    for_cases((secs, 0u32..1_000_000_000), |rt, (secs, nanos)| {
        // Seconds and nanoseconds: humantime text for any `Duration`.
        let text = format!("{secs}s {nanos}ns");
        let d = Duration::new(secs, nanos);
        match parse_duration(&text) {
            Ok(parsed) => {
                prop_assert_eq!(parsed, d, "{}", text);
                prop_assert!(parsed <= MAX_DURATION, "{}", text);
                arm(rt, parsed);
            }
            Err(e) => prop_assert!(d > MAX_DURATION, "{}: {}", text, e),
        }
        Ok(())
    });
}

#[test]
fn any_accepted_duration_text_is_a_timer() {
    for_cases(duration_text(), |rt, text| {
        if let Ok(d) = parse_duration(&text) {
            prop_assert!(d <= MAX_DURATION, "{}", text);
            arm(rt, d);
        }
        Ok(())
    });
}
