//! The parsers of setting values clap cannot read by itself: durations
//! (`200ms`, `10s`) and lists of VIPs.

use std::time::Duration;

use crate::vip::{InvalidVip, Vip, parse_vip_list};

/// Parses a duration written like `200ms`, `10s`, `1.5s`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| {
            format!("invalid duration {s:?}: missing unit (ms, s, m, h), as in 200ms or 10s")
        })?;
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {num:?} is not a number"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("invalid duration {s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A comma-separated list of VIPs as one flag value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipList(pub Vec<Vip>);

pub(super) fn parse_vips(s: &str) -> Result<VipList, String> {
    parse_vip_list(s)
        .map(VipList)
        .map_err(|e: InvalidVip| e.to_string())
}

/// [`parse_duration`], refusing zero.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}
