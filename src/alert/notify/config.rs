//! `[[notifier]]` tables of the alert rules files, their checks, and the
//! notifier they build once secrets and URLs are read from the environment.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::alert::rules::{Rule, Severity};

/// Where a notifier sends.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NotifierKind {
    /// JSON describing the transition, signed with HMAC-SHA256.
    Webhook,
    /// A Slack incoming webhook (or a compatible one: Mattermost, Rocket.Chat).
    Slack,
    /// Alertmanager's `POST /api/v2/alerts`.
    Alertmanager,
}

/// One `[[notifier]]` table.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierDef {
    /// Unique name (1 to 64 letters, digits, `_` or `-`): the `notifier`
    /// label of the metrics and of `delivery` in `GET /v1/alerts`.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: NotifierKind,
    /// The receiver's URL (`http` or `https`); for `alertmanager` its base
    /// URL (`http://alertmanager:9093`), to which `/api/v2/alerts` is added.
    /// Give it here or name the environment variable holding it in
    /// `url_env` (a Slack webhook URL is itself a secret).
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// webhook: the HMAC-SHA256 key of the signature header (at least 16
    /// characters), or in `secret_env` the variable holding it.
    pub secret: Option<String>,
    pub secret_env: Option<String>,
    /// Alerts of lower severity are not sent here.
    #[serde(default = "lowest")]
    pub min_severity: Severity,
    /// Only these rules' alerts are sent here (none: every rule's).
    #[serde(default)]
    pub rules: Vec<String>,
    /// Send resolutions too (webhook, slack; Alertmanager always needs them).
    #[serde(default = "yes")]
    pub send_resolved: bool,
    /// alertmanager: labels added to every alert (`team = "web"`), for its
    /// routes; they cannot replace the labels flowmeter sets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn lowest() -> Severity {
    Severity::Low
}
fn yes() -> bool {
    true
}

/// Labels every alert sent to Alertmanager carries (payload.rs).
pub const ALERTMANAGER_LABELS: [&str; 5] = ["alertname", "severity", "subject", "view", "measure"];

/// Shortest webhook secret.
pub const MIN_SECRET_CHARS: usize = 16;

/// A checked notifier, with its URL and secret.
#[derive(Clone)]
pub struct Notifier {
    pub name: String,
    pub kind: NotifierKind,
    /// Where requests go (for Alertmanager, with `/api/v2/alerts`).
    pub url: url::Url,
    pub secret: Option<Vec<u8>>,
    pub min_severity: Severity,
    pub rules: HashSet<String>,
    pub send_resolved: bool,
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the URL may hold a token (Slack), the secret is one
        f.debug_struct("Notifier")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// Whether `rule`'s alerts go here.
    pub fn wants(&self, rule: &Rule) -> bool {
        rule.severity >= self.min_severity
            && (self.rules.is_empty() || self.rules.contains(&rule.name))
    }
}

fn label_name_ok(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks the notifiers of every rules file against the rules; messages
/// name the notifier and the key.
pub fn check(defs: &[NotifierDef], rules: &[Rule]) -> Result<(), String> {
    let mut names = HashSet::new();
    for d in defs {
        let named = |m: String| format!("notifier {:?}: {m}", d.name);
        let bad = |m: String| Err(named(m));
        if d.name.is_empty()
            || d.name.len() > 64
            || !d
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return bad("name must be 1 to 64 letters, digits, `_` or `-`".into());
        }
        if !names.insert(d.name.as_str()) {
            return bad("name used twice".into());
        }
        if d.url.is_some() == d.url_env.is_some() {
            return bad("give url or url_env (one of them)".into());
        }
        let signed = d.kind == NotifierKind::Webhook;
        let has_secret = d.secret.is_some() || d.secret_env.is_some();
        if signed && d.secret.is_some() == d.secret_env.is_some() {
            return bad("a webhook is signed: give secret or secret_env (one of them)".into());
        }
        if !signed && has_secret {
            return bad("secret and secret_env are for webhooks only".into());
        }
        if d.kind == NotifierKind::Alertmanager && !d.send_resolved {
            return bad(
                "send_resolved = false is not for alertmanager: it would keep resolved alerts firing until they expire"
                    .into(),
            );
        }
        if d.kind != NotifierKind::Alertmanager && !d.labels.is_empty() {
            return bad("labels are for alertmanager only".into());
        }
        for (k, v) in &d.labels {
            if !label_name_ok(k) || ALERTMANAGER_LABELS.contains(&k.as_str()) {
                return bad(format!(
                    "label {k:?}: use [A-Za-z_][A-Za-z0-9_]* other than {}",
                    ALERTMANAGER_LABELS.join(", ")
                ));
            }
            if v.is_empty() || v.len() > 256 {
                return bad(format!("label {k:?}: its value must be 1 to 256 bytes"));
            }
        }
        for r in &d.rules {
            if !rules.iter().any(|x| &x.name == r) {
                return bad(format!("rules: no rule named {r:?}"));
            }
        }
        if let Some(url) = &d.url {
            parse_url(d, url).map_err(named)?;
        }
        if let Some(secret) = &d.secret {
            check_secret(secret).map_err(named)?;
        }
    }
    Ok(())
}

fn check_secret(secret: &str) -> Result<(), String> {
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_CHARS} characters"
        ));
    }
    Ok(())
}

/// The URL requests go to.
fn parse_url(d: &NotifierDef, text: &str) -> Result<url::Url, String> {
    // the URL may hold a token: errors name no part of it
    let mut u = url::Url::parse(text.trim())
        .map_err(|e| format!("url is not a URL ({e}): write http(s)://host[:port]/path"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err("url must be http:// or https:// with a host".into());
    }
    if d.kind == NotifierKind::Alertmanager {
        let base = u.path().trim_end_matches('/').to_string();
        u.set_path(&format!("{base}/api/v2/alerts"));
    }
    Ok(u)
}

/// Builds checked notifiers, reading `url_env` and `secret_env` through
/// `env` (the process environment, or a test's).
pub fn build(
    defs: &[NotifierDef],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<Notifier>, String> {
    defs.iter()
        .map(|d| {
            let bad = |m: String| format!("notifier {:?}: {m}", d.name);
            let read = |var: &String| {
                env(var)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| bad(format!("environment variable {var} is not set")))
            };
            let url = match (&d.url, &d.url_env) {
                (Some(u), _) => u.clone(),
                (None, Some(var)) => read(var)?,
                (None, None) => return Err(bad("no url".into())),
            };
            let secret = match (&d.secret, &d.secret_env) {
                (Some(s), _) => Some(s.clone()),
                (None, Some(var)) => Some(read(var)?),
                (None, None) => None,
            };
            if let Some(s) = &secret {
                check_secret(s).map_err(bad)?;
            }
            Ok(Notifier {
                name: d.name.clone(),
                kind: d.kind,
                url: parse_url(d, &url).map_err(bad)?,
                secret: secret.map(String::into_bytes),
                min_severity: d.min_severity,
                rules: d.rules.iter().cloned().collect(),
                send_resolved: d.send_resolved,
                labels: d.labels.clone(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defs(text: &str) -> Vec<NotifierDef> {
        #[derive(Deserialize)]
        struct File {
            notifier: Vec<NotifierDef>,
        }
        toml::from_str::<File>(text).expect("parses").notifier
    }

    fn refused(text: &str) -> String {
        check(&defs(text), &[]).expect_err("refused")
    }

    #[test]
    fn notifiers_are_checked_with_messages_naming_them() {
        let e = refused("[[notifier]]\nname = \"a b\"\ntype = \"slack\"\nurl = \"https://h/x\"");
        assert!(
            e.contains("notifier \"a b\"") && e.contains("letters"),
            "{e}"
        );
        let e = refused("[[notifier]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"https://h/x\"");
        assert!(e.contains("signed"), "{e}");
        let e = refused(
            "[[notifier]]\nname = \"w\"\ntype = \"webhook\"\nurl = \"https://h/x\"\nsecret = \"short\"",
        );
        assert!(e.contains("at least 16"), "{e}");
        let e = refused("[[notifier]]\nname = \"s\"\ntype = \"slack\"\nurl = \"ftp://h/x\"");
        assert!(e.contains("http:// or https://"), "{e}");
        let e = refused(
            "[[notifier]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://h/x\"\nurl_env = \"X\"",
        );
        assert!(e.contains("one of them"), "{e}");
        let e = refused(
            "[[notifier]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://h\"\nsend_resolved = false",
        );
        assert!(e.contains("send_resolved"), "{e}");
        let e = refused(
            "[[notifier]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://h\"\nlabels = { alertname = \"x\" }",
        );
        assert!(e.contains("label \"alertname\""), "{e}");
        let e = refused("[[notifier]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://h/x\"\nrules = [\"nope\"]");
        assert!(e.contains("no rule named \"nope\""), "{e}");
        let e = refused("[[notifier]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://h/x\"\n[[notifier]]\nname = \"s\"\ntype = \"slack\"\nurl = \"https://h/y\"");
        assert!(e.contains("used twice"), "{e}");
        // an unknown type does not parse
        assert!(toml::from_str::<NotifierDef>(
            "name = \"s\"\ntype = \"pager\"\nurl = \"https://h\""
        )
        .is_err());
    }

    #[test]
    fn urls_and_secrets_come_from_the_environment_when_named() {
        let d = defs(
            "[[notifier]]\nname = \"w\"\ntype = \"webhook\"\nurl_env = \"HOOK_URL\"\nsecret_env = \"HOOK_SECRET\"\n\
             [[notifier]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://am:9093/\"",
        );
        check(&d, &[]).expect("valid");
        let env = |k: &str| match k {
            "HOOK_URL" => Some("https://hooks.example/in".to_string()),
            "HOOK_SECRET" => Some("0123456789abcdef".to_string()),
            _ => None,
        };
        let built = build(&d, env).expect("built");
        assert_eq!(built[0].url.as_str(), "https://hooks.example/in");
        assert_eq!(built[0].secret.as_deref(), Some(&b"0123456789abcdef"[..]));
        assert_eq!(built[1].url.as_str(), "http://am:9093/api/v2/alerts");
        let e = build(&d, |_| None).expect_err("unset");
        assert!(e.contains("HOOK_URL is not set"), "{e}");
        let short = |k: &str| (k == "HOOK_SECRET").then(|| "x".to_string()).or(env(k));
        assert!(build(&d, short).expect_err("short").contains("at least 16"));
        assert!(!format!("{:?}", built[0]).contains("0123456789abcdef"));
    }
}
