//! Typed query parameters that answer every bad one at once.
//!
//! A handler declares its parameters as a struct read by [`Params`] (axum's
//! `Query` with the API's own 400), each field a [`Param<T>`] of a type that
//! says what the parameter is: [`Time`], [`Limit`], or an enum with
//! [`FromParam`]. A value that does not parse is kept with its reason, not
//! rejected at once, so [`ParamErrors`] can list every bad parameter of the
//! request in one answer (`errors[]`), as users of the API expect.
//! Parameters a struct does not name (a rollup's dimension filters, the
//! archive's column filters) are kept in a `#[serde(flatten)]` [`Rest`] for
//! the handler to check against its table; one given more than once is
//! refused by name (as a named one is), not silently narrowed to its last
//! value.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use super::error::{capped, ParamErrors, MAX_ECHOED_CHARS};
use super::ApiError;

/// A type a query parameter's text parses into; the error is the reason,
/// which the answer pairs with the parameter's name.
pub trait FromParam: Sized {
    fn from_param(text: &str) -> Result<Self, String>;
}

/// One parameter: its value, or why its text is not one.
#[derive(Debug, Clone, PartialEq)]
pub struct Param<T>(Result<T, String>);

impl<'de, T: FromParam> Deserialize<'de> for Param<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Param(T::from_param(&text)))
    }
}

/// The parameters a handler's struct does not name (`#[serde(flatten)]`),
/// by name, remembering the names given more than once.
#[derive(Debug, Default)]
pub struct Rest {
    values: BTreeMap<String, String>,
    repeated: BTreeSet<String>,
}

impl<'de> Deserialize<'de> for Rest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct RestVisitor;
        impl<'de> Visitor<'de> for RestVisitor {
            type Value = Rest;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("query parameters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Rest, A::Error> {
                let mut rest = Rest::default();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if rest.values.insert(k.clone(), v).is_some() {
                        rest.repeated.insert(k);
                    }
                }
                Ok(rest)
            }
        }
        d.deserialize_map(RestVisitor)
    }
}

impl ParamErrors {
    /// The parameters of `rest` by name, noting each given more than once
    /// (`service=a&service=b`): a filter takes one value, and keeping the
    /// last would answer another question than the one asked.
    pub fn rest(&mut self, rest: Rest) -> BTreeMap<String, String> {
        for name in rest.repeated.iter().filter(|n| *n != "token") {
            self.add(
                name,
                "is given more than once; a filter takes one value: make one request per value, or leave it out for all",
            );
        }
        rest.values
    }

    /// The value of parameter `name` (`None` when absent), noting its error
    /// when its text did not parse. `Some(None)` is "absent"; `None` is
    /// "bad, and noted".
    pub fn param<T>(&mut self, name: &str, p: Option<Param<T>>) -> Option<Option<T>> {
        match p {
            None => Some(None),
            Some(Param(Ok(v))) => Some(Some(v)),
            Some(Param(Err(reason))) => {
                self.add(name, reason);
                None
            }
        }
    }

    /// Notes each of `rest` that is not in `known` (`token` is the access
    /// layer's) as an unknown parameter, in name order, with `hint`.
    pub fn unknown(&mut self, rest: &BTreeMap<String, String>, known: &[&str], hint: &str) {
        for name in rest.keys() {
            if name != "token" && !known.contains(&name.as_str()) {
                self.add(name, format!("unknown parameter; {hint}"));
            }
        }
    }
}

/// A query time: RFC 3339 (`2026-03-01T10:00:00Z`, any offset) or a date
/// (`2026-03-01`, midnight UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Time(pub chrono::DateTime<chrono::Utc>);

impl FromParam for Time {
    fn from_param(text: &str) -> Result<Self, String> {
        parse_time(text).map(Time)
    }
}

/// `limit`: an integer from 1 to `MAX`, else `DEFAULT`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit<const DEFAULT: u64, const MAX: u64>(pub u64);

impl<const DEFAULT: u64, const MAX: u64> Limit<DEFAULT, MAX> {
    /// The limit asked for, or the default when absent or bad.
    pub fn or_default(l: Option<Option<Self>>) -> u64 {
        l.flatten().map_or(DEFAULT, |l| l.0)
    }
}

impl<const DEFAULT: u64, const MAX: u64> FromParam for Limit<DEFAULT, MAX> {
    fn from_param(text: &str) -> Result<Self, String> {
        text.parse::<u64>()
            .ok()
            .filter(|n| (1..=MAX).contains(n))
            .map(Limit)
            .ok_or_else(|| format!("must be an integer from 1 to {MAX}"))
    }
}

/// A number (the archive's `min_<column>` filters).
impl FromParam for f64 {
    fn from_param(text: &str) -> Result<Self, String> {
        text.parse::<f64>()
            .ok()
            .filter(|n| n.is_finite())
            .ok_or_else(|| format!("{:?} is not a number", capped(text, MAX_ECHOED_CHARS)))
    }
}

/// Declares a parameter enum: its variants, their texts and the reason
/// given for any other text.
macro_rules! param_enum {
    ($(#[$m:meta])* $name:ident, $reason:literal, { $($(#[$vm:meta])* $v:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl FromParam for $name {
            fn from_param(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok(Self::$v),)+
                    _ => Err($reason.to_string()),
                }
            }
        }
    };
}

param_enum!(
    /// `format` of a rollup answer.
    Format, "must be json or csv", { Json = "json", Csv = "csv" }
);
param_enum!(
    /// `state` of `GET /v1/alerts`.
    AlertState, "must be open, resolved or all", { All = "all", Open = "open", Resolved = "resolved" }
);
param_enum!(
    /// `order` of an archive search.
    Order, "use asc or desc", { Asc = "asc", Desc = "desc" }
);

/// axum's `Query<T>` whose failures are the API's JSON 400: a parameter
/// given twice is named, as a bad value is.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(v)) => Ok(Params(v)),
            Err(e) => Err(rejected(&e.body_text())),
        }
    }
}

/// The 400 for a query string serde could not read.
fn rejected(text: &str) -> ApiError {
    // "Failed to deserialize query string: duplicate field `from`"
    if let Some(name) = text
        .split("duplicate field `")
        .nth(1)
        .and_then(|s| s.split('`').next())
    {
        return super::error::bad_param(name, "is given more than once");
    }
    super::error::bad_param("query", capped(text, MAX_ECHOED_CHARS))
}

/// Now, to the whole second: a default `to` the answer can echo exactly.
pub fn now_secs() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    chrono::Utc::now().trunc_subsecs(0)
}

/// A time as answers write it (`from`, `to`): RFC 3339 in UTC with `Z`, to
/// the second like the rows' times (`2026-03-01T10:00:00Z`), with a fraction
/// only when the request gave one.
pub fn echo_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// A query time: RFC 3339 (`2026-03-01T10:00:00Z`, any offset) or a date
/// (`2026-03-01`, midnight UTC). An offset whose `+` a URL turned into a
/// space (`…T10:00:00 01:00`) is refused with a hint to write `%2B`.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    use crate::event::parse_ts;
    let is_date = s.len() == 10
        && s.char_indices().all(|(i, c)| {
            if i == 4 || i == 7 {
                c == '-'
            } else {
                c.is_ascii_digit()
            }
        });
    let ms = if is_date {
        parse_ts(&format!("{s}T00:00:00Z"))
    } else {
        parse_ts(s)
    };
    if let Some(t) = ms.ok().and_then(chrono::DateTime::from_timestamp_millis) {
        return Ok(t);
    }
    let got = capped(s, MAX_ECHOED_CHARS);
    if s.contains(' ') && parse_ts(&s.replacen(' ', "+", 1)).is_ok() {
        return Err(format!(
            "{got:?} has a space where its offset's + was: write + as %2B in a URL (e.g. 2026-03-01T10:00:00%2B01:00), or use Z"
        ));
    }
    Err(format!(
        "{got:?} is not a time: use RFC 3339 (e.g. 2026-03-01T10:00:00Z) or a date (2026-03-01, midnight UTC)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Q {
        from: Option<Param<Time>>,
        limit: Option<Param<Limit<500, 10_000>>>,
        format: Option<Param<Format>>,
        #[serde(flatten)]
        rest: Rest,
    }

    fn q(s: &str) -> Result<Q, ApiError> {
        let uri: axum::http::Uri = format!("/x?{s}").parse().expect("uri");
        Query::<Q>::try_from_uri(&uri)
            .map(|Query(q)| q)
            .map_err(|e| rejected(&e.body_text()))
    }

    #[test]
    fn query_times_take_rfc3339_or_a_date_and_explain_a_lost_plus() {
        let t = |s: &str| parse_time(s).map(|t| t.timestamp_millis());
        assert_eq!(t("2026-03-01T00:00:00Z"), Ok(1_772_323_200_000));
        assert_eq!(t("2026-03-01"), Ok(1_772_323_200_000));
        assert_eq!(t("2026-03-01T01:00:00+01:00"), Ok(1_772_323_200_000));
        let lost = parse_time("2026-03-01T01:00:00 01:00").expect_err("space");
        assert!(lost.contains("%2B"), "{lost}");
        for bad in ["2026-3-1", "2026-13-01", "yesterday", "9999-01-01", ""] {
            let e = parse_time(bad).expect_err(bad);
            assert!(e.contains("RFC 3339") && e.contains("date"), "{bad}: {e}");
        }
    }

    #[test]
    fn every_bad_value_is_kept_with_its_reason_and_the_rest_is_kept_for_the_handler() {
        let p = q("from=yesterday&limit=0&format=xml&route=%2Fa&token=t").expect("structure");
        let mut errs = ParamErrors::default();
        assert_eq!(errs.param("from", p.from), None);
        assert_eq!(errs.param("limit", p.limit), None);
        assert_eq!(errs.param("format", p.format), None);
        let rest = errs.rest(p.rest);
        errs.unknown(&rest, &[], "filters: service");
        let Err(ApiError::BadParams { errors, omitted: 0 }) = errs.finish() else {
            panic!("several errors")
        };
        let names: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["from", "limit", "format", "route"]);
        assert_eq!(errors[1].1, "must be an integer from 1 to 10000");
        assert_eq!(errors[2].1, "must be json or csv");
        assert!(errors[3].1.starts_with("unknown parameter; filters"));
    }

    #[test]
    fn absent_parameters_are_none_and_good_ones_parse() {
        let p = q("limit=20&format=csv").expect("structure");
        let mut errs = ParamErrors::default();
        assert_eq!(errs.param("from", p.from), Some(None));
        let limit = errs.param("limit", p.limit);
        assert_eq!(Limit::<500, 10_000>::or_default(limit), 20);
        assert_eq!(errs.param("format", p.format), Some(Some(Format::Csv)));
        assert!(errs.finish().is_ok());
        assert_eq!(Limit::<500, 10_000>::or_default(Some(None)), 500);
    }

    #[test]
    fn times_are_echoed_with_z_to_the_second() {
        let t = |s: &str| echo_time(parse_time(s).expect("time"));
        assert_eq!(t("2026-03-01T11:00:00+01:00"), "2026-03-01T10:00:00Z");
        assert_eq!(t("2026-03-01"), "2026-03-01T00:00:00Z");
        assert_eq!(t("2026-03-01T10:00:00.250Z"), "2026-03-01T10:00:00.250Z");
        let now = echo_time(now_secs());
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
    }

    #[test]
    fn a_filter_given_twice_is_named_once_and_others_kept() {
        let p = q("service=a&route=%2Fx&service=b&service=c").expect("structure");
        let mut errs = ParamErrors::default();
        let rest = errs.rest(p.rest);
        assert_eq!(rest.get("route").map(String::as_str), Some("/x"));
        match errs.finish() {
            Err(ApiError::BadParam { param, reason }) => {
                assert_eq!(param, "service");
                assert!(reason.starts_with("is given more than once"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_parameter_given_twice_is_named() {
        match q("from=2026-01-01&from=2026-01-02") {
            Err(ApiError::BadParam { param, reason }) => {
                assert_eq!(param, "from");
                assert_eq!(reason, "is given more than once");
            }
            other => panic!("{other:?}"),
        }
    }
}
