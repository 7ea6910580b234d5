//! Calendar windows in UTC (hour, day, month) and their bounds.
//!
//! Not here: spend (budget.rs).

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use serde::Deserialize;
use std::fmt::Write as _;

/// A calendar window in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    /// From minute 0 of each hour.
    Hour,
    /// From 00:00 UTC.
    Day,
    /// From 00:00 UTC on the 1st.
    Month,
}

impl EncodeLabelValue for Window {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.name())
    }
}

impl Window {
    pub(super) const ALL: [Self; 3] = [Self::Hour, Self::Day, Self::Month];

    pub(super) fn index(self) -> usize {
        match self {
            Self::Hour => 0,
            Self::Day => 1,
            Self::Month => 2,
        }
    }

    /// The name used in the config, labels and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
        }
    }

    /// Start and end (unix seconds) of the window holding `now`.
    pub fn bounds(self, now: i64) -> (i64, i64) {
        match self {
            Self::Hour => {
                let start = now.div_euclid(3600) * 3600;
                (start, start + 3600)
            }
            Self::Day => {
                let start = now.div_euclid(86_400) * 86_400;
                (start, start + 86_400)
            }
            Self::Month => {
                let (y, m, _) = civil_from_days(now.div_euclid(86_400));
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (
                    days_from_civil(y, m, 1) * 86_400,
                    days_from_civil(ny, nm, 1) * 86_400,
                )
            }
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn month_bounds_cross_years_and_leap_days() {
        // 2024-02-29 12:00 UTC.
        let t = 1_709_208_000;
        let (start, end) = Window::Month.bounds(t);
        assert_eq!(start, 1_706_745_600); // 2024-02-01
        assert_eq!(end, 1_709_251_200); // 2024-03-01
        // 2026-12-31 23:59:59 UTC.
        let (start, end) = Window::Month.bounds(1_798_761_599);
        assert_eq!(start, 1_796_083_200); // 2026-12-01
        assert_eq!(end, 1_798_761_600); // 2027-01-01
        assert_eq!(Window::Day.bounds(86_399), (0, 86_400));
        assert_eq!(Window::Hour.bounds(3_600), (3_600, 7_200));
    }
}
