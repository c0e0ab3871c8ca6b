//! Commit times: microseconds since the Unix epoch, RFC 3339 on the way in and out.

use crate::{Error, Result};

/// Now, in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Parse an RFC 3339 timestamp (`2025-01-01T00:00:00Z`, offsets and
/// fractions allowed) to microseconds. A malformed time is an error.
pub fn parse_rfc3339(s: &str) -> Result<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).map_err(|e| {
        Error::Query(format!("malformed timestamp {s:?}: {e} (expected RFC 3339, like 2025-01-01T00:00:00Z)"))
    })?;
    i64::try_from(t.unix_timestamp_nanos() / 1000).map_err(|_| Error::Query(format!("timestamp {s:?} out of range")))
}

/// Format microseconds as RFC 3339 in UTC with microsecond precision.
pub fn format_rfc3339(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");
    t.format(&fmt).unwrap_or_else(|_| micros.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let m = parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
        assert_eq!(m, 1_735_689_600_000_000);
        assert_eq!(format_rfc3339(m), "2025-01-01T00:00:00.000000Z");
        assert_eq!(parse_rfc3339("2025-01-01T02:00:00.5+02:00").unwrap(), m + 500_000);
        for bad in ["2025-13-01T00:00:00Z", "yesterday", "2025-01-01", ""] {
            assert!(matches!(parse_rfc3339(bad), Err(Error::Query(_))), "{bad}");
        }
    }
}
