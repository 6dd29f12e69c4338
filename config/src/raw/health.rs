//! Validation of a service's health-check keys (`health_check`, `health_interval`,
//! `health_down_interval`, `health_timeout`, `rise`, `fall`), each with its located error.

use serde_saphyr::Spanned;

use balancers::{SchedulerKind, SlowStart};

use super::Validator;
use crate::model::{HealthCheck, Outliers, Probe};

/// The most consecutive results `rise` and `fall` may ask for.
const MAX_COUNT: i64 = 100;
/// The most bytes `health_send` and `health_expect` may hold.
const MAX_BYTES: usize = 1024;

/// `200` or `200-399`, within 100 to 599, low end first.
fn parse_status(s: &str) -> Option<std::ops::RangeInclusive<u16>> {
    let (low, high) = s.split_once('-').unwrap_or((s, s));
    let (low, high) = (
        low.trim().parse::<u16>().ok()?,
        high.trim().parse::<u16>().ok()?,
    );
    ((100..=599).contains(&low) && (low..=599).contains(&high)).then_some(low..=high)
}

/// A service's health-check keys as written.
pub(super) struct RawHealth {
    pub check: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub down_interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub rise: Option<Spanned<i64>>,
    pub fall: Option<Spanned<i64>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub status: Option<Spanned<String>>,
    pub on_marked_down: Option<Spanned<String>>,
}

/// A service's outlier-detection keys as written.
pub(super) struct RawOutliers {
    pub after: Option<Spanned<i64>>,
    pub time: Option<Spanned<String>>,
    pub max_percent: Option<Spanned<i64>>,
}

impl Validator {
    /// `slow_start`: a positive duration, for a scheduler that weighs backends (`kind`, when
    /// it is known).
    pub(super) fn slow_start(
        &mut self,
        path: &str,
        raw: Option<Spanned<String>>,
        kind: Option<SchedulerKind>,
    ) -> Option<Option<std::time::Duration>> {
        let Some(s) = raw else {
            return Some(None);
        };
        if let Some(kind) = kind.filter(|&k| !SlowStart::applies_to(k)) {
            let why = format!(
                "slow start ramps weights, and scheduler {kind} does not weigh backends: \
                 use wrr, wlc, sed or nq"
            );
            self.at(&s, format!("{path}.slow_start"), why);
            return None;
        }
        let time = self.duration(Some(s), format!("{path}.slow_start"), Default::default())?;
        Some(Some(time))
    }

    /// Outlier detection: `eject_after` 1 to [`MAX_COUNT`] turns it on (0 or absent: off,
    /// and then `eject_time` and `max_eject_percent` are errors); TCP services only.
    pub(super) fn outliers(
        &mut self,
        path: &str,
        raw: RawOutliers,
        tcp: bool,
    ) -> Option<Option<Outliers>> {
        let after = match &raw.after {
            None => 0,
            Some(n) if (0..=MAX_COUNT).contains(&n.value) && (tcp || n.value == 0) => {
                u32::try_from(n.value).unwrap_or(0)
            }
            Some(n) => {
                let why = if tcp {
                    format!("must be between 0 (off) and {MAX_COUNT}, got {}", n.value)
                } else {
                    "outlier detection is for TCP services only".to_owned()
                };
                self.at(n, format!("{path}.eject_after"), why);
                return None;
            }
        };
        if after == 0 {
            let mut ok = true;
            if let Some(t) = &raw.time {
                self.at(t, format!("{path}.eject_time"), "only with eject_after");
                ok = false;
            }
            if let Some(p) = &raw.max_percent {
                self.at(
                    p,
                    format!("{path}.max_eject_percent"),
                    "only with eject_after",
                );
                ok = false;
            }
            return ok.then_some(None);
        }
        let time = self.duration(raw.time, format!("{path}.eject_time"), Outliers::TIME);
        let max_percent = match raw.max_percent {
            None => Some(Outliers::MAX_PERCENT),
            Some(p) if (1..=100).contains(&p.value) => u32::try_from(p.value).ok(),
            Some(p) => {
                let why = format!("must be between 1 and 100, got {}", p.value);
                self.at(&p, format!("{path}.max_eject_percent"), why);
                None
            }
        };
        Some(Some(Outliers {
            after,
            time: time?,
            max_percent: max_percent?,
        }))
    }

    /// The health checks of a service: `None` inside when `health_check` is absent (then
    /// the other keys are errors: they would do nothing).
    pub(super) fn health(&mut self, path: &str, raw: RawHealth) -> Option<Option<HealthCheck>> {
        let Some(check) = raw.check.clone() else {
            return self.no_strays(path, &raw).then_some(None);
        };
        let probe = match Probe::parse(&check.value) {
            Some(p) => Some(p),
            None => {
                let why = format!(
                    "{:?} is not a health check: tcp, or http:PATH with PATH starting with /",
                    check.value
                );
                self.at(&check, format!("{path}.health_check"), why);
                None
            }
        };
        let interval = self.duration(
            raw.interval,
            format!("{path}.health_interval"),
            HealthCheck::INTERVAL,
        );
        let down_interval = match raw.down_interval {
            None => interval,
            some => self.duration(
                some,
                format!("{path}.health_down_interval"),
                HealthCheck::INTERVAL,
            ),
        };
        let timeout = self.duration(
            raw.timeout,
            format!("{path}.health_timeout"),
            HealthCheck::TIMEOUT,
        );
        let rise = self.count(raw.rise, format!("{path}.rise"), HealthCheck::RISE);
        let fall = self.count(raw.fall, format!("{path}.fall"), HealthCheck::FALL);
        let http = matches!(probe, Some(Probe::Http { .. }));
        let send = self.probe_bytes(path, "health_send", raw.send, !http);
        let expect = self.probe_bytes(path, "health_expect", raw.expect, !http);
        let status = self.status(path, raw.status, http);
        let shutdown_sessions = self.on_marked_down(path, raw.on_marked_down);
        Some(Some(HealthCheck {
            probe: probe?,
            interval: interval?,
            down_interval: down_interval?,
            timeout: timeout?,
            rise: rise?,
            fall: fall?,
            send: send?,
            expect: expect?,
            status: status?,
            shutdown_sessions: shutdown_sessions?,
        }))
    }

    /// `on_marked_down`: `keep` (the default) or `shutdown-sessions`.
    fn on_marked_down(&mut self, path: &str, raw: Option<Spanned<String>>) -> Option<bool> {
        let Some(raw) = raw else {
            return Some(false);
        };
        match raw.value.as_str() {
            "keep" => Some(false),
            "shutdown-sessions" => Some(true),
            other => {
                let why = format!("{other:?}: use keep or shutdown-sessions");
                self.at(&raw, format!("{path}.on_marked_down"), why);
                None
            }
        }
    }

    /// Without `health_check`, the other health keys would do nothing: each is an error.
    fn no_strays(&mut self, path: &str, raw: &RawHealth) -> bool {
        let strays = [
            (
                "health_interval",
                raw.interval.as_ref().map(|s| s.referenced),
            ),
            (
                "health_down_interval",
                raw.down_interval.as_ref().map(|s| s.referenced),
            ),
            ("health_timeout", raw.timeout.as_ref().map(|s| s.referenced)),
            ("rise", raw.rise.as_ref().map(|s| s.referenced)),
            ("fall", raw.fall.as_ref().map(|s| s.referenced)),
            ("health_send", raw.send.as_ref().map(|s| s.referenced)),
            ("health_expect", raw.expect.as_ref().map(|s| s.referenced)),
            ("health_status", raw.status.as_ref().map(|s| s.referenced)),
            (
                "on_marked_down",
                raw.on_marked_down.as_ref().map(|s| s.referenced),
            ),
        ];
        let mut ok = true;
        for (key, at) in strays {
            if let Some(at) = at {
                self.problems.push(crate::error::Problem {
                    line: Some(at.line()),
                    column: Some(at.column()),
                    path: format!("{path}.{key}"),
                    reason: "only with health_check (tcp or http:PATH)".into(),
                });
                ok = false;
            }
        }
        ok
    }

    /// `health_send` or `health_expect` (`key`): bytes of a `tcp` check, at most
    /// [`MAX_BYTES`].
    fn probe_bytes(
        &mut self,
        path: &str,
        key: &str,
        raw: Option<Spanned<String>>,
        tcp: bool,
    ) -> Option<Vec<u8>> {
        let Some(raw) = raw else {
            return Some(Vec::new());
        };
        let why = if !tcp {
            "only with health_check: tcp"
        } else if raw.value.len() > MAX_BYTES {
            "longer than 1024 bytes"
        } else {
            return Some(raw.value.into_bytes());
        };
        self.at(&raw, format!("{path}.{key}"), why);
        None
    }

    /// `health_status`: `200`, or a range `200-399`, of HTTP statuses (100 to 599) that pass.
    fn status(
        &mut self,
        path: &str,
        raw: Option<Spanned<String>>,
        http: bool,
    ) -> Option<std::ops::RangeInclusive<u16>> {
        let Some(raw) = raw else {
            return Some(HealthCheck::STATUS);
        };
        let parsed = parse_status(&raw.value);
        match parsed {
            Some(range) if http => Some(range),
            _ => {
                let why = if http {
                    format!(
                        "{:?} is not a status or a range of them (200, 200-399)",
                        raw.value
                    )
                } else {
                    "only with health_check: http:PATH".to_owned()
                };
                self.at(&raw, format!("{path}.health_status"), why);
                None
            }
        }
    }

    /// `rise` or `fall`: 1 to [`MAX_COUNT`].
    fn count(&mut self, raw: Option<Spanned<i64>>, path: String, default: u32) -> Option<u32> {
        let Some(n) = raw else {
            return Some(default);
        };
        match u32::try_from(n.value) {
            Ok(v) if (1..=MAX_COUNT).contains(&n.value) => Some(v),
            _ => {
                let why = format!("must be between 1 and {MAX_COUNT}, got {}", n.value);
                self.at(&n, path, why);
                None
            }
        }
    }
}
