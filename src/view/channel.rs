//! The channel grammar: `<view>:<scope>` for a scope without dimensions,
//! `<view>:<scope>:<dim>:…` with one non-empty part per dimension (the
//! last part may hold `:`), `<view>:<list>`, and `alerts`.

use std::sync::Arc;

use super::compile::View;
use super::Views;

/// Longest channel name, in characters.
pub const MAX_CHANNEL_CHARS: usize = 512;

/// Characters of a bad channel name quoted in its error frame.
const QUOTED_CHARS: usize = 64;

/// What a channel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// One subject of a view's scope.
    Scope { view: usize, scope: usize },
    /// A view's list (`webrtc:meetings`).
    List { view: usize, list: usize },
    /// Alert announcements.
    Alerts,
}

/// A channel name, parsed against the views.
#[derive(Clone)]
pub struct Channel {
    name: Arc<str>,
    pub target: Target,
    view: Option<Arc<View>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Channel({:?})", self.name)
    }
}

impl PartialEq for Channel {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
    }
}

impl Eq for Channel {}

impl std::hash::Hash for Channel {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.name.hash(h)
    }
}

impl Channel {
    /// The `alerts` channel.
    pub fn alerts() -> Self {
        Self {
            name: "alerts".into(),
            target: Target::Alerts,
            view: None,
        }
    }

    pub fn is_alerts(&self) -> bool {
        self.target == Target::Alerts
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The view it belongs to (`None` for `alerts`).
    pub fn view(&self) -> Option<&View> {
        self.view.as_deref()
    }

    /// A scope without dimensions or a list: fixed names every dashboard
    /// shows, which always fit in the channel table.
    pub fn is_overview(&self) -> bool {
        match (self.target, self.view()) {
            (Target::Scope { scope, .. }, Some(v)) => {
                v.scopes.get(scope).is_some_and(|s| s.dims.is_empty())
            }
            (Target::List { .. }, _) => true,
            _ => false,
        }
    }

    /// The point of a second without events.
    pub fn zero_point(&self, sec: i64) -> serde_json::Value {
        match (self.target, self.view()) {
            (Target::Scope { .. }, Some(v)) => v.point_json(&Default::default(), sec),
            _ => serde_json::json!({"t": sec * 1000}),
        }
    }

    /// The summary of a channel without data.
    pub fn empty_summary(&self) -> serde_json::Value {
        match self.view() {
            Some(v) => v.empty_summary(&self.target),
            None => serde_json::json!({}),
        }
    }
}

impl Channel {
    /// `name` parsed against the views of this tree, or (a name they do
    /// not know) a channel of a scope of no view.
    #[cfg(test)]
    pub fn for_tests(name: &str) -> Channel {
        Views::of_repo().channel(name).unwrap_or_else(|_| Channel {
            name: name.into(),
            target: Target::Scope { view: 0, scope: 0 },
            view: None,
        })
    }
}

impl Views {
    /// The forms of every channel, for error messages.
    fn forms(&self) -> Vec<String> {
        let mut out = Vec::new();
        for v in self.iter() {
            for s in &v.scopes {
                let mut f = format!("{}:{}", v.name, s.name);
                for d in &s.dims {
                    f.push_str(&format!(":<{d}>"));
                }
                out.push(f);
            }
            for l in &v.lists {
                out.push(format!("{}:{}", v.name, l.name));
            }
        }
        out
    }

    /// Parses a channel name: `<view>:<scope>[:<dim>…]`, `<view>:<list>` or
    /// `alerts`. Errors quote at most the name's first characters, escaped.
    pub fn channel(&self, name: &str) -> Result<Channel, String> {
        let quoted = || {
            let head: String = name.chars().take(QUOTED_CHARS).collect();
            match name.chars().nth(QUOTED_CHARS) {
                Some(_) => format!("{head:?}…"),
                None => format!("{head:?}"),
            }
        };
        if name.chars().nth(MAX_CHANNEL_CHARS).is_some() {
            return Err(format!(
                "channel name longer than {MAX_CHANNEL_CHARS} characters: {}",
                quoted()
            ));
        }
        if name == "alerts" {
            return Ok(Channel::alerts());
        }
        let found = name.split_once(':').and_then(|(view, rest)| {
            let (vi, v) = self.iter().enumerate().find(|(_, v)| v.name == view)?;
            let (head, tail) = match rest.split_once(':') {
                Some((h, t)) => (h, Some(t)),
                None => (rest, None),
            };
            if let (Some(li), None) = (v.lists.iter().position(|l| l.name == head), tail) {
                return Some((Target::List { view: vi, list: li }, v));
            }
            let si = v.scopes.iter().position(|s| s.name == head)?;
            let dims = v.scopes.get(si)?.dims.len();
            let fits = match tail {
                None => dims == 0,
                Some(t) => {
                    dims > 0 && t.splitn(dims, ':').filter(|p| !p.is_empty()).count() == dims
                }
            };
            fits.then_some((
                Target::Scope {
                    view: vi,
                    scope: si,
                },
                v,
            ))
        });
        match found {
            Some((target, v)) => Ok(Channel {
                name: name.into(),
                target,
                view: Some(v.clone()),
            }),
            None => {
                let forms = self.forms();
                let list = match forms.as_slice() {
                    [] => "alerts".to_string(),
                    f => format!("{} or alerts", f.join(", ")),
                };
                Err(format!("unknown channel {}: use {list}", quoted()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cuts_long_names_on_characters_and_keeps_colons() {
        let views = Views::of_repo();
        // byte 40 falls inside a two-byte character; 613 characters is too long
        let long = format!("http:service:{}", "é".repeat(600));
        let e = views.channel(&long).expect_err("too long");
        assert!(e.contains("longer than 512 characters"), "{e}");
        let fits = format!("http:service:{}", "𝄞".repeat(300));
        assert_eq!(
            views.channel(&fits).map(|c| c.name().to_string()),
            Ok(fits.clone())
        );
        let ab = views
            .channel("http:service:a:b")
            .expect("a service with a colon");
        assert!(matches!(ab.target, Target::Scope { .. }) && !ab.is_overview());
        assert!(views.channel("http:endpoint:svc:GET").is_err());
        assert!(views.channel("http:endpoint:svc:GET:/a:b").is_ok());
        assert!(views.channel("webrtc:meeting:").is_err());
        assert!(views.channel("http:overview:x").is_err());
        let meetings = views.channel("webrtc:meetings").expect("the list");
        assert!(matches!(meetings.target, Target::List { .. }) && meetings.is_overview());
        assert!(views
            .channel("http:overview")
            .expect("overview")
            .is_overview());
        assert!(views.channel("alerts").expect("alerts").is_alerts());
    }

    #[test]
    fn errors_quote_a_bounded_head_of_the_name_and_list_the_forms() {
        let views = Views::of_repo();
        // control characters escape to 8 bytes each: found by the ws_message fuzz target
        let bad = "\u{17}".repeat(500);
        let e = views.channel(&bad).expect_err("unknown");
        assert!(e.len() < 1024, "{} bytes", e.len());
        assert!(e.ends_with("or alerts") && e.contains('…'), "{e}");
        let e = views.channel("nope").expect_err("unknown");
        assert!(
            e.contains("http:endpoint:<service>:<method>:<endpoint>")
                && e.contains("webrtc:meetings"),
            "{e}"
        );
    }
}
