//! Bandwidth schedules (`join --rate-schedule`): the node's download and upload caps by local
//! day and time, e.g. `mon-fri 08:00-19:00 50M; sat,sun 20M/5M; * 0`.
//!
//! Rules are tried in order and the first that matches the local time sets both caps:
//! - days: `*`, a day (`mon` … `sun`), a range (`mon-fri`, `fri-mon`), or a comma list of those;
//! - an optional span `HH:MM-HH:MM` (end excluded; `22:00-06:00` runs past midnight);
//! - a rate: `50M` caps downloads and uploads alike, `50M/10M` each on its own; `0` or `off` is
//!   no cap. Units as for `--max-download-rate`.
//!
//! When no rule matches, the caps given with `--max-download-rate`/`--max-upload-rate` apply.
//! [`drive`] looks at the clock every second and changes the caps of running transfers, which
//! follow within a twentieth of a second ([`crate::throttle::Throttle::set_rate`]); its clock is
//! passed in, so tests move time by hand.

use crate::throttle::{Throttle, parse_rate};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A local time of the week: day (0 = Monday) and minute of the day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeekTime {
    /// 0 = Monday … 6 = Sunday.
    pub day: u8,
    /// 0 ..= 1439.
    pub minute: u16,
}

impl WeekTime {
    /// The machine's local time now.
    pub fn now() -> Self {
        use chrono::{Datelike as _, Timelike as _};
        let t = chrono::Local::now();
        Self {
            day: u8::try_from(t.weekday().num_days_from_monday()).unwrap_or(0),
            minute: u16::try_from(t.hour() * 60 + t.minute()).unwrap_or(0),
        }
    }
}

/// Download and upload caps, bytes per second (`None`: no cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Caps {
    /// Downloads (Hub and peers together).
    pub download: Option<u64>,
    /// What is served to peers.
    pub upload: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    days: [bool; 7],
    /// Start and end minute; `None` for the whole day.
    span: Option<(u16, u16)>,
    caps: Caps,
}

impl Rule {
    fn matches(&self, t: WeekTime) -> bool {
        let day = usize::from(t.day % 7);
        match self.span {
            None => self.days[day],
            Some((from, to)) if from < to => self.days[day] && (from..to).contains(&t.minute),
            // Past midnight: the evening belongs to the day named, the morning to the day after.
            Some((from, to)) => (self.days[day] && t.minute >= from) || (self.days[(day + 6) % 7] && t.minute < to),
        }
    }
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    rules: Vec<Rule>,
}

impl Schedule {
    /// The caps the first matching rule sets at `t`, if one matches.
    pub fn caps_at(&self, t: WeekTime) -> Option<Caps> {
        self.rules.iter().find(|r| r.matches(t)).map(|r| r.caps)
    }
}

fn day(s: &str) -> Result<usize, String> {
    DAYS.iter()
        .position(|d| s.eq_ignore_ascii_case(d))
        .ok_or_else(|| format!("'{s}' is not a day (mon, tue, wed, thu, fri, sat, sun)"))
}

fn days(s: &str) -> Result<[bool; 7], String> {
    let mut out = [false; 7];
    for part in s.split(',') {
        if part == "*" {
            out = [true; 7];
            continue;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    out[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out[day(part)?] = true,
        }
    }
    Ok(out)
}

fn minute(s: &str) -> Result<u16, String> {
    let bad = || format!("'{s}' is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m >= 60 || h > 24 || (h == 24 && m > 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn cap(s: &str) -> Result<Option<u64>, String> {
    if s == "0" || s.eq_ignore_ascii_case("off") { Ok(None) } else { parse_rate(s).map(Some) }
}

impl FromStr for Schedule {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for text in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
            let words: Vec<&str> = text.split_whitespace().collect();
            let in_rule = |e: String| format!("rule '{text}': {e}");
            let (days_word, span, rate) = match words.as_slice() {
                [d, rate] => (*d, None, *rate),
                [d, span, rate] => (*d, Some(*span), *rate),
                _ => return Err(in_rule("write DAYS [HH:MM-HH:MM] RATE, e.g. 'mon-fri 08:00-19:00 50M'".into())),
            };
            let span = match span {
                None => None,
                Some(s) => {
                    let (a, b) = s.split_once('-').ok_or_else(|| in_rule(format!("'{s}' is not HH:MM-HH:MM")))?;
                    let (a, b) = (minute(a).map_err(in_rule)?, minute(b).map_err(in_rule)?);
                    if a == b {
                        return Err(in_rule(format!("'{s}' is empty")));
                    }
                    Some((a, b))
                }
            };
            let caps = match rate.split_once('/') {
                None => {
                    let c = cap(rate).map_err(in_rule)?;
                    Caps { download: c, upload: c }
                }
                Some((d, u)) => Caps { download: cap(d).map_err(in_rule)?, upload: cap(u).map_err(in_rule)? },
            };
            rules.push(Rule { days: days(days_word).map_err(in_rule)?, span, caps });
        }
        if rules.is_empty() {
            return Err("the schedule has no rule".into());
        }
        Ok(Self { rules })
    }
}

/// Keeps `download`'s and `upload`'s caps on `schedule`, checking `clock` every second; outside
/// every rule, `fallback` applies. Runs until the task is dropped.
pub async fn drive(
    schedule: Schedule,
    fallback: Caps,
    download: Arc<Throttle>,
    upload: Arc<Throttle>,
    clock: impl Fn() -> WeekTime,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let caps = schedule.caps_at(clock()).unwrap_or(fallback);
        if last != Some(caps) {
            let show = |c: Option<u64>| c.map_or_else(|| "none".to_owned(), |r| format!("{r} B/s"));
            tracing::info!(download = %show(caps.download), upload = %show(caps.upload), "rate schedule: caps changed");
            download.set_rate(caps.download);
            upload.set_rate(caps.upload);
            last = Some(caps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn at(day: u8, hh: u16, mm: u16) -> WeekTime {
        WeekTime { day, minute: hh * 60 + mm }
    }

    #[test]
    fn the_first_matching_rule_sets_the_caps() {
        let s: Schedule = "mon-fri 08:00-19:00 50M; sat,sun 20M/5M; * 0".parse().expect("parses");
        let both = |r| Caps { download: Some(r), upload: Some(r) };
        assert_eq!(s.caps_at(at(0, 8, 0)), Some(both(50_000_000)));
        assert_eq!(s.caps_at(at(4, 18, 59)), Some(both(50_000_000)));
        assert_eq!(s.caps_at(at(4, 19, 0)), Some(Caps::default()), "the end is excluded: '* 0' is no cap");
        assert_eq!(s.caps_at(at(2, 7, 59)), Some(Caps::default()));
        assert_eq!(s.caps_at(at(6, 12, 0)), Some(Caps { download: Some(20_000_000), upload: Some(5_000_000) }));
        let night: Schedule = "fri 22:00-06:00 1G".parse().expect("parses");
        assert!(night.caps_at(at(4, 23, 0)).is_some(), "friday evening");
        assert!(night.caps_at(at(5, 5, 59)).is_some(), "saturday morning belongs to friday's night");
        assert!(night.caps_at(at(5, 6, 0)).is_none());
        assert!(night.caps_at(at(4, 5, 0)).is_none(), "friday morning belongs to thursday's night");
        let wrap: Schedule = "fri-mon 10M".parse().expect("parses");
        assert!(wrap.caps_at(at(6, 0, 0)).is_some() && wrap.caps_at(at(0, 0, 0)).is_some());
        assert!(wrap.caps_at(at(1, 0, 0)).is_none());
    }

    #[test]
    fn a_bad_schedule_names_the_rule_and_what_is_allowed() {
        for (spec, says) in [
            ("", "no rule"),
            ("monday 50M", "not a day (mon, tue"),
            ("mon 25:00-26:00 5M", "not a time of day"),
            ("mon 08:00-08:00 5M", "is empty"),
            ("mon 08:00 5M", "not HH:MM-HH:MM"),
            ("mon 5Q", "unknown unit"),
            ("mon", "write DAYS [HH:MM-HH:MM] RATE"),
        ] {
            let e = spec.parse::<Schedule>().expect_err(spec);
            assert!(e.contains(says), "{spec:?}: {e}");
        }
    }

    /// The driver follows an injected clock: caps change within a second of the clock crossing
    /// a rule's edge, and running transfers follow them.
    #[tokio::test(start_paused = true)]
    async fn caps_follow_the_clock_within_a_second() {
        let s: Schedule = "mon 08:00-09:00 1M/2M; * 0".parse().expect("parses");
        let (down, up) = (Arc::new(Throttle::new(None)), Arc::new(Throttle::new(None)));
        let now = Arc::new(Mutex::new(at(0, 7, 59)));
        let clock = {
            let now = now.clone();
            move || *now.lock().expect("clock")
        };
        let fallback = Caps { download: Some(9_000_000), upload: None };
        tokio::spawn(drive(s, fallback, down.clone(), up.clone(), clock));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!((down.rate(), up.rate()), (None, None), "07:59: '* 0', no cap");
        *now.lock().expect("clock") = at(0, 8, 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((down.rate(), up.rate()), (Some(1_000_000), Some(2_000_000)), "08:00, within a second");
        // A transfer running under the cap takes 1 MB a second.
        let start = tokio::time::Instant::now();
        for _ in 0..40 {
            down.take(50_000).await;
        }
        let secs = start.elapsed().as_secs_f64();
        assert!((1.9..=2.1).contains(&secs), "2 MB at 1 MB/s took {secs:.2} s");
        *now.lock().expect("clock") = at(1, 8, 30);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(down.rate(), None, "tuesday: '* 0'");
        let only_monday: Schedule = "mon 1M".parse().expect("parses");
        assert_eq!(only_monday.caps_at(at(1, 0, 0)).unwrap_or(fallback), fallback, "no rule: the flags' caps");
    }
}
