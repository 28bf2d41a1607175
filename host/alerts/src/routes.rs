//! Routes: which alert-handler plugins a group goes to. Each route belongs
//! to a project, matches alerts by their labels (Alertmanager matchers) and
//! optionally by the receiver path, sends the matching alerts to its
//! handlers, and stops there unless `continue` is set (as Alertmanager's
//! routes). Routes are tried by `order`, then name. A route may be muted
//! by time windows (weekdays and times of day in a time zone); muted
//! alerts are recorded as muted, not dropped silently.

use chrono::{Datelike, Timelike};
use serde::{Deserialize, Serialize};

use crate::matchers::{Matcher, all_match};
use crate::model::Alert;

/// A route, as in the config file (`[[alerts.routes]]`) or `PUT /v1/alerts/routes/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Name, `[a-z0-9-]`, 1-63 characters (from the path on `PUT`).
    #[serde(default)]
    pub name: String,
    /// The project that owns the route; its handlers must belong to it.
    pub project: String,
    /// Only groups posted to this receiver path (`/v1/alerts/alertmanager/{receiver}`); any if unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<String>,
    /// Alertmanager matchers over each alert's labels, all must match, e.g. `severity=~"critical|page"`.
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub matchers: Vec<Matcher>,
    /// Alert-handler plugins the matching alerts go to (at least one).
    pub handlers: Vec<String>,
    /// Offer the alerts to later routes too.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// Routes are tried by `order`, then by name (default 100).
    #[serde(default = "default_order")]
    pub order: i64,
    /// Windows during which the route is muted.
    #[serde(default)]
    pub mute: Vec<MuteWindow>,
}

fn default_order() -> i64 {
    100
}

/// A recurring time window, like Alertmanager's `time_intervals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MuteWindow {
    /// Days, `monday`..`sunday` (or `mon`..`sun`), or ranges `monday:friday`; every day if empty.
    #[serde(default)]
    pub weekdays: Vec<String>,
    /// Times of day `HH:MM-HH:MM` (end exclusive, `24:00` allowed); all day if empty.
    #[serde(default)]
    pub times: Vec<String>,
    /// IANA time zone of the days and times (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

fn weekday(s: &str) -> Result<u32, String> {
    const DAYS: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let l = s.trim().to_ascii_lowercase();
    DAYS.iter()
        .position(|d| l == *d || (l.len() == 3 && d.starts_with(&l)))
        .map(|i| i as u32)
        .ok_or_else(|| format!("`{s}` is not a weekday"))
}

fn minutes(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
        m.parse().map_err(|_| format!("`{s}` is not HH:MM"))?,
    );
    if m > 59 || h > 24 || (h == 24 && m > 0) {
        return Err(format!("`{s}` is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl MuteWindow {
    fn days(&self) -> Result<Vec<(u32, u32)>, String> {
        self.weekdays
            .iter()
            .map(|d| match d.split_once(':') {
                Some((a, b)) => Ok((weekday(a)?, weekday(b)?)),
                None => weekday(d).map(|w| (w, w)),
            })
            .collect()
    }

    fn ranges(&self) -> Result<Vec<(u32, u32)>, String> {
        self.times
            .iter()
            .map(|t| {
                let (a, b) = t
                    .split_once('-')
                    .ok_or_else(|| format!("`{t}` is not HH:MM-HH:MM"))?;
                let (a, b) = (minutes(a)?, minutes(b)?);
                if a >= b {
                    return Err(format!("`{t}`: the start must be before the end"));
                }
                Ok((a, b))
            })
            .collect()
    }

    fn check(&self) -> Result<(), String> {
        self.days()?;
        self.ranges()?;
        self.timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| format!("`{}` is not an IANA time zone", self.timezone))?;
        Ok(())
    }

    /// Whether `at_ms` (Unix ms) falls in the window.
    pub fn contains(&self, at_ms: i64) -> bool {
        let (Ok(days), Ok(ranges), Ok(tz)) = (
            self.days(),
            self.ranges(),
            self.timezone.parse::<chrono_tz::Tz>(),
        ) else {
            return false;
        };
        let Some(utc) = chrono::DateTime::from_timestamp_millis(at_ms) else {
            return false;
        };
        let local = utc.with_timezone(&tz);
        let day = local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        let day_ok = days.is_empty()
            || days.iter().any(|&(a, b)| {
                if a <= b {
                    (a..=b).contains(&day)
                } else {
                    day >= a || day <= b
                }
            });
        let time_ok = ranges.is_empty() || ranges.iter().any(|&(a, b)| minute >= a && minute < b);
        day_ok && time_ok
    }
}

/// Route names: `[a-z0-9-]`, 1-63 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl Route {
    /// Checks what can be checked without the registry.
    pub fn check(&self) -> Result<(), String> {
        let at = |e: String| format!("route `{}`: {e}", self.name);
        if !valid_name(&self.name) {
            return Err(at("the name must be [a-z0-9-], 1 to 63 characters".into()));
        }
        if self.project.is_empty() {
            return Err(at("`project` is required".into()));
        }
        if self.handlers.is_empty() {
            return Err(at(
                "`handlers` needs at least one alert-handler plugin".into()
            ));
        }
        for (i, w) in self.mute.iter().enumerate() {
            w.check().map_err(|e| at(format!("mute[{i}]: {e}")))?;
        }
        Ok(())
    }

    /// Whether the route is muted at `at_ms`.
    pub fn muted_at(&self, at_ms: i64) -> bool {
        self.mute.iter().any(|w| w.contains(at_ms))
    }
}

/// One route's share of a group.
#[derive(Debug, Clone)]
pub struct Dispatch<'r> {
    /// The route.
    pub route: &'r Route,
    /// The alerts it matched.
    pub alerts: Vec<Alert>,
}

/// Splits the group's `alerts` over `routes` (sorted by order, then name):
/// each alert goes to the first route that matches it and, while those
/// routes say `continue`, to the later ones that match too.
pub fn dispatch<'r>(routes: &'r [Route], receiver: &str, alerts: &[Alert]) -> Vec<Dispatch<'r>> {
    let mut out: Vec<Dispatch<'r>> = Vec::new();
    let mut remaining: Vec<&Alert> = alerts.iter().collect();
    for route in routes {
        if route.receiver.as_deref().is_some_and(|r| r != receiver) {
            continue;
        }
        let (hit, miss): (Vec<&Alert>, Vec<&Alert>) = remaining
            .iter()
            .partition(|a| all_match(&route.matchers, &a.labels));
        if hit.is_empty() {
            continue;
        }
        out.push(Dispatch {
            route,
            alerts: hit.iter().map(|a| (*a).clone()).collect(),
        });
        if !route.continue_ {
            remaining = miss;
        }
    }
    out
}

/// Sorts routes the way they are tried.
pub fn sort(routes: &mut [Route]) {
    routes.sort_by(|a, b| a.order.cmp(&b.order).then_with(|| a.name.cmp(&b.name)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, matchers: &[&str], cont: bool) -> Route {
        Route {
            name: name.into(),
            project: "ops".into(),
            receiver: None,
            matchers: matchers
                .iter()
                .map(|m| Matcher::parse(m).unwrap())
                .collect(),
            handlers: vec!["h".into()],
            continue_: cont,
            order: 100,
            mute: vec![],
        }
    }

    fn alert(fp: &str, sev: &str) -> Alert {
        Alert {
            status: "firing".into(),
            labels: [("severity".to_string(), sev.to_string())].into(),
            annotations: Default::default(),
            starts_at: "t".into(),
            ends_at: String::new(),
            generator_url: String::new(),
            fingerprint: fp.into(),
        }
    }

    #[test]
    fn first_match_wins_unless_continue() {
        let alerts = vec![alert("a", "critical"), alert("b", "warning")];
        let routes = vec![
            route("a-page", &[r#"severity=~"critical|page""#], false),
            route("b-all", &[], false),
        ];
        let d = dispatch(&routes, "x", &alerts);
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].alerts.len(), 1);
        assert_eq!(d[1].alerts[0].fingerprint, "b");
        let routes = vec![
            route("a-page", &[r#"severity=~"critical|page""#], true),
            route("b-all", &[], false),
        ];
        let d = dispatch(&routes, "x", &alerts);
        assert_eq!(d[1].alerts.len(), 2);
    }

    #[test]
    fn mute_windows_follow_days_times_and_zone() {
        // 2026-12-05 is a Saturday; 10:30 UTC is 11:30 in Berlin.
        let sat = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:30:00Z")
            .unwrap()
            .timestamp_millis();
        let w = MuteWindow {
            weekdays: vec!["saturday:sunday".into()],
            times: vec!["11:00-12:00".into()],
            timezone: "Europe/Berlin".into(),
        };
        assert!(w.contains(sat));
        let utc = MuteWindow {
            timezone: "UTC".into(),
            ..w.clone()
        };
        assert!(!utc.contains(sat));
        let weekdays = MuteWindow {
            weekdays: vec!["mon:fri".into()],
            times: vec![],
            timezone: "UTC".into(),
        };
        assert!(!weekdays.contains(sat));
        assert!(
            MuteWindow {
                times: vec!["12:00-11:00".into()],
                ..w.clone()
            }
            .check()
            .is_err()
        );
        assert!(
            MuteWindow {
                timezone: "Mars/Base".into(),
                ..w
            }
            .check()
            .is_err()
        );
    }
}
