//! Where a new consumer group starts reading: `beginning`, `now`, an RFC 3339
//! time, or a stream id. Used by `start_from` in processor definitions and
//! by `flowmeter groups create/reset`.

use std::fmt;
use std::str::FromStr;

use super::StreamId;
use crate::event::parse_ts;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// Every retained entry.
    Beginning,
    /// Only entries added after the group is created.
    Now,
    /// Entries added at or after this time (epoch ms).
    Time(i64),
    /// Entries after this id.
    After(StreamId),
}

impl StartFrom {
    /// The id given to XGROUP CREATE / SETID (the group's "last delivered").
    pub fn group_id(&self) -> String {
        match self {
            StartFrom::Beginning => "0".into(),
            StartFrom::Now => "$".into(),
            StartFrom::Time(ms) if *ms <= 0 => "0".into(),
            // the last id before `ms`, so entries at `ms` itself are delivered
            StartFrom::Time(ms) => format!("{}-{}", ms - 1, u64::MAX),
            StartFrom::After(id) => id.to_string(),
        }
    }
}

impl FromStr for StartFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "beginning" | "0" => Ok(StartFrom::Beginning),
            "now" | "$" => Ok(StartFrom::Now),
            t if t.contains('T') => parse_ts(t).map(StartFrom::Time).map_err(|e| {
                format!("start {t:?}: {e} (use beginning, now, an RFC 3339 time or a stream id)")
            }),
            id => id.parse::<StreamId>().map(StartFrom::After).map_err(|_| {
                format!("start {id:?}: use beginning, now, an RFC 3339 time or a stream id (e.g. 1772359200000-0)")
            }),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Beginning => write!(f, "beginning"),
            StartFrom::Now => write!(f, "now"),
            StartFrom::Time(ms) => write!(f, "{}", crate::event::format_rfc3339_ms(*ms)),
            StartFrom::After(id) => write!(f, "{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("beginning".parse(), Ok(StartFrom::Beginning));
        assert_eq!("now".parse(), Ok(StartFrom::Now));
        assert_eq!(
            "2026-03-01T10:00:00Z"
                .parse::<StartFrom>()
                .map(|s| s.group_id()),
            Ok(format!("1772359199999-{}", u64::MAX))
        );
        assert_eq!(
            "1772359200000-5".parse::<StartFrom>().map(|s| s.group_id()),
            Ok("1772359200000-5".to_string())
        );
        assert!("yesterday".parse::<StartFrom>().is_err());
        assert!("2026-13-01T00:00:00Z".parse::<StartFrom>().is_err());
    }
}
