//! UTC timestamps for records (RFC 3339 with nanoseconds) and for rotated file names, without a
//! date crate: the civil-from-days conversion is a dozen lines (H. Hinnant's algorithm).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock time of an event, taken on the core when the event is recorded (not when the
/// writer gets to it), so a record's `ts` is when it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Timestamp {
    secs: u64,
    nanos: u32,
}

impl Timestamp {
    pub(crate) fn now() -> Self {
        // A clock before 1970 is a broken host; record the epoch rather than fail a record.
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    #[cfg(test)]
    pub(crate) fn from_parts(secs: u64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }

    /// `2024-05-06T07:08:09.123456789Z`
    pub(crate) fn write_rfc3339(&self, out: &mut Vec<u8>) {
        let (y, mo, d, h, mi, s) = self.civil();
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
            self.nanos
        );
    }

    /// [`Timestamp::write_rfc3339`] as a string (a time inside a record's fields).
    pub(crate) fn rfc3339(&self) -> String {
        let mut out = Vec::with_capacity(30);
        self.write_rfc3339(&mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// `20240506T070809.123456789Z`: sorts like the time it names, used in rotated file names.
    pub(crate) fn compact(&self) -> String {
        let (y, mo, d, h, mi, s) = self.civil();
        format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{:09}Z", self.nanos)
    }

    fn civil(&self) -> (i64, u32, u32, u64, u64, u64) {
        let days = (self.secs / 86_400) as i64;
        let rem = self.secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(secs: u64, nanos: u32) -> String {
        let mut v = Vec::new();
        Timestamp::from_parts(secs, nanos).write_rfc3339(&mut v);
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn known_dates() {
        assert_eq!(rfc(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(
            rfc(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            rfc(4_107_542_399, 999_999_999),
            "2100-02-28T23:59:59.999999999Z"
        );
        assert_eq!(
            Timestamp::from_parts(1_700_000_000, 1).compact(),
            "20231114T221320.000000001Z"
        );
    }

    #[test]
    fn every_day_for_two_centuries_is_consecutive() {
        let mut prev = civil_from_days(-1);
        for day in 0..(365 * 200) {
            let cur = civil_from_days(day);
            let next_day = (prev.0, prev.1, prev.2 + 1) == cur;
            let next_month = cur.2 == 1 && ((prev.0, prev.1 + 1) == (cur.0, cur.1));
            let next_year = (cur.1, cur.2) == (1, 1) && prev.0 + 1 == cur.0;
            assert!(next_day || next_month || next_year, "{prev:?} -> {cur:?}");
            prev = cur;
        }
    }
}
