//! Alertmanager's notification semantics, pure and clocked by the caller: the routing tree
//! (matchers, `continue`), grouping (`group_by`, `group_wait`, `group_interval`,
//! `repeat_interval`, `send_resolved`), inhibition, silences, and the notification log that
//! decides whether a group has anything new to say — which is what keeps a restart from
//! re-sending.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use regex::Regex;

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex(Regex),
    NotRegex(Regex),
}

/// `name=value`, `name!=value`, `name=~regex`, `name!~regex`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl std::fmt::Display for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex(_) => "=~",
            MatchOp::NotRegex(_) => "!~",
        };
        write!(f, "{}{}{}", self.name, op, self.value)
    }
}

/// Why a matcher does not parse.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MatcherError {
    #[error("expected name=value, name!=value, name=~regex or name!~regex")]
    NoOperator,
    #[error("{0:?} is not a label name")]
    LabelName(String),
    #[error(transparent)]
    Regex(#[from] regex::Error),
}

impl Matcher {
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let text = text.trim();
        let (name, op, value) = ["=~", "!~", "!=", "="]
            .iter()
            .find_map(|op| text.split_once(op).map(|(n, v)| (n, *op, v)))
            .ok_or(MatcherError::NoOperator)?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        {
            return Err(MatcherError::LabelName(name.to_string()));
        }
        let value = value.trim().trim_matches('"').to_string();
        let anchored = |v: &str| Regex::new(&format!("^(?:{v})$"));
        let op = match op {
            "=" => MatchOp::Equal,
            "!=" => MatchOp::NotEqual,
            "=~" => MatchOp::Regex(anchored(&value)?),
            _ => MatchOp::NotRegex(anchored(&value)?),
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value,
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.name).map(String::as_str).unwrap_or("");
        match &self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex(re) => re.is_match(value),
            MatchOp::NotRegex(re) => !re.is_match(value),
        }
    }
}

pub fn all_match(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub receiver: String,
    pub matchers: Vec<Matcher>,
    /// `["..."]` groups by every label.
    pub group_by: Vec<String>,
    pub group_wait: Duration,
    pub group_interval: Duration,
    pub repeat_interval: Duration,
    pub send_resolved: bool,
    pub continue_: bool,
    pub routes: Vec<Route>,
}

impl Default for Route {
    fn default() -> Self {
        Route {
            receiver: String::new(),
            matchers: Vec::new(),
            group_by: vec!["alertname".into(), "service".into()],
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(5 * 60),
            repeat_interval: Duration::from_secs(4 * 3600),
            // Unlike Alertmanager's e-mail default: a resolve is the news people wait for.
            send_resolved: true,
            continue_: false,
            routes: Vec::new(),
        }
    }
}

impl Route {
    /// The routes an alert goes to, depth first: a matching child takes it unless `continue`.
    pub fn matching<'a>(
        &'a self,
        labels: &Labels,
        path: &mut Vec<usize>,
        out: &mut Vec<(Vec<usize>, &'a Route)>,
    ) {
        let mut matched_child = false;
        for (i, child) in self.routes.iter().enumerate() {
            if !all_match(&child.matchers, labels) {
                continue;
            }
            path.push(i);
            child.matching(labels, path, out);
            path.pop();
            matched_child = true;
            if !child.continue_ {
                break;
            }
        }
        if !matched_child {
            out.push((path.clone(), self));
        }
    }

    fn group_labels(&self, labels: &Labels) -> Labels {
        if self.group_by.iter().any(|g| g == "...") {
            return labels.clone();
        }
        self.group_by
            .iter()
            .filter_map(|k| labels.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Inhibit {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

impl Inhibit {
    fn inhibits(&self, source: &Labels, target: &Labels) -> bool {
        source != target
            && all_match(&self.source, source)
            && all_match(&self.target, target)
            && self.equal.iter().all(|k| source.get(k) == target.get(k))
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Silence {
    pub id: String,
    #[serde(serialize_with = "matchers_as_text")]
    pub matchers: Vec<Matcher>,
    pub starts_at_ms: i64,
    pub ends_at_ms: i64,
    pub created_by: String,
    pub comment: String,
}

fn matchers_as_text<S: serde::Serializer>(matchers: &[Matcher], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(matchers.iter().map(|m| m.to_string()))
}

impl Silence {
    pub fn active(&self, now_ms: i64) -> bool {
        self.starts_at_ms <= now_ms && now_ms < self.ends_at_ms
    }

    pub fn silences(&self, labels: &Labels, now_ms: i64) -> bool {
        self.active(now_ms) && all_match(&self.matchers, labels)
    }
}

/// An alert as the dispatcher sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertView {
    pub key: String,
    pub labels: Labels,
    pub firing: bool,
}

/// What was last notified for a group; persisted so a restart does not repeat itself.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogEntry {
    pub receiver: String,
    pub firing: BTreeSet<String>,
    pub resolved: BTreeSet<String>,
    pub last_sent_ms: i64,
}

/// A notification the dispatcher decided to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Flush {
    pub group_key: String,
    pub receiver: String,
    pub group_labels: Labels,
    pub firing: Vec<String>,
    pub resolved: Vec<String>,
}

#[derive(Debug)]
struct Group {
    receiver: String,
    route: Route,
    labels: Labels,
    next_flush_ms: i64,
    alerts: BTreeMap<String, bool>,
}

/// Groups alerts and decides, on each tick, which groups have news.
#[derive(Debug, Default)]
pub struct Dispatcher {
    groups: HashMap<String, Group>,
    pub log: HashMap<String, LogEntry>,
}

impl Dispatcher {
    pub fn with_log(log: HashMap<String, LogEntry>) -> Self {
        Dispatcher {
            groups: HashMap::new(),
            log,
        }
    }

    /// Replaces the alerts of every group with `alerts` (firing and recently resolved ones),
    /// after inhibition and silences. New groups wait `group_wait`.
    pub fn update(
        &mut self,
        root: &Route,
        inhibit: &[Inhibit],
        silences: &[Silence],
        alerts: &[AlertView],
        now_ms: i64,
    ) {
        let firing: Vec<&AlertView> = alerts.iter().filter(|a| a.firing).collect();
        let mut seen: HashMap<String, BTreeMap<String, bool>> = HashMap::new();
        for alert in alerts {
            let muted = silences.iter().any(|s| s.silences(&alert.labels, now_ms))
                || (alert.firing
                    && firing.iter().any(|source| {
                        inhibit
                            .iter()
                            .any(|rule| rule.inhibits(&source.labels, &alert.labels))
                    }));
            if muted {
                continue;
            }
            let mut routes = Vec::new();
            root.matching(&alert.labels, &mut Vec::new(), &mut routes);
            for (path, route) in routes {
                let group_labels = route.group_labels(&alert.labels);
                let key = format!(
                    "{:?}:{}",
                    path,
                    group_labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v:?}"))
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let group = self.groups.entry(key.clone()).or_insert_with(|| Group {
                    receiver: route.receiver.clone(),
                    route: route.clone(),
                    labels: group_labels,
                    next_flush_ms: now_ms + route.group_wait.as_millis() as i64,
                    alerts: BTreeMap::new(),
                });
                group.route = route.clone();
                seen.entry(key)
                    .or_default()
                    .insert(alert.key.clone(), alert.firing);
            }
        }
        for (key, group) in self.groups.iter_mut() {
            group.alerts = seen.remove(key).unwrap_or_default();
        }
    }

    /// Groups due now that have something new: a new firing alert, a new resolve (when
    /// `send_resolved`), or firing alerts past `repeat_interval`.
    pub fn due(&mut self, now_ms: i64) -> Vec<Flush> {
        let mut out = Vec::new();
        let mut finished = Vec::new();
        for (key, group) in self.groups.iter_mut() {
            if now_ms < group.next_flush_ms {
                continue;
            }
            group.next_flush_ms = now_ms + group.route.group_interval.as_millis() as i64;
            let firing: BTreeSet<String> = group
                .alerts
                .iter()
                .filter(|(_, f)| **f)
                .map(|(k, _)| k.clone())
                .collect();
            let resolved: BTreeSet<String> = group
                .alerts
                .iter()
                .filter(|(_, f)| !**f)
                .map(|(k, _)| k.clone())
                .collect();
            let previous = self.log.get(key).cloned().unwrap_or_default();
            let new_firing = !firing.is_subset(&previous.firing);
            let newly_resolved: BTreeSet<String> = resolved
                .iter()
                .filter(|k| previous.firing.contains(*k) && !previous.resolved.contains(*k))
                .cloned()
                .collect();
            let new_resolved = group.route.send_resolved && !newly_resolved.is_empty();
            let repeat = !firing.is_empty()
                && now_ms - previous.last_sent_ms >= group.route.repeat_interval.as_millis() as i64;
            if new_firing || new_resolved || repeat {
                out.push(Flush {
                    group_key: key.clone(),
                    receiver: group.receiver.clone(),
                    group_labels: group.labels.clone(),
                    firing: firing.iter().cloned().collect(),
                    resolved: if group.route.send_resolved {
                        resolved.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                });
                self.log.insert(
                    key.clone(),
                    LogEntry {
                        receiver: group.receiver.clone(),
                        firing: firing.clone(),
                        resolved: resolved.clone(),
                        last_sent_ms: now_ms,
                    },
                );
            } else if firing.is_empty() && !previous.firing.is_empty() && !group.route.send_resolved
            {
                // Everything resolved and resolves are not sent: forget what was notified.
                self.log.remove(key);
            }
            if group.alerts.is_empty() {
                finished.push(key.clone());
            }
        }
        for key in finished {
            self.groups.remove(&key);
        }
        out
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn alert(key: &str, firing: bool, extra: &[(&str, &str)]) -> AlertView {
        let mut l = labels(&[("alertname", "HighP99"), ("service", "api")]);
        l.extend(labels(extra));
        l.insert("id".into(), key.into());
        AlertView {
            key: key.into(),
            labels: l,
            firing,
        }
    }

    fn route() -> Route {
        Route {
            receiver: "oncall".into(),
            group_wait: Duration::from_secs(30),
            group_interval: Duration::from_secs(300),
            repeat_interval: Duration::from_secs(3600),
            ..Route::default()
        }
    }

    const S: i64 = 1000;

    #[test]
    fn matchers_parse_and_match() {
        let l = labels(&[("severity", "page"), ("service", "api-7")]);
        assert!(Matcher::parse("severity=page").unwrap().matches(&l));
        assert!(Matcher::parse("severity!=ticket").unwrap().matches(&l));
        assert!(Matcher::parse("service=~api-[0-9]+").unwrap().matches(&l));
        assert!(
            !Matcher::parse("service=~api").unwrap().matches(&l),
            "regexes are anchored"
        );
        assert!(Matcher::parse("service!~db.*").unwrap().matches(&l));
        assert!(Matcher::parse("nonsense").is_err());
    }

    #[test]
    fn group_wait_then_group_interval_then_repeat() {
        let mut d = Dispatcher::default();
        let root = route();
        d.update(&root, &[], &[], &[alert("a", true, &[])], 0);
        assert!(
            d.due(29 * S).is_empty(),
            "group_wait holds the first notification"
        );
        let first = d.due(30 * S);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].firing, vec!["a".to_string()]);
        // A second alert joins: it waits for the group interval.
        d.update(
            &root,
            &[],
            &[],
            &[alert("a", true, &[]), alert("b", true, &[])],
            40 * S,
        );
        assert!(d.due(300 * S).is_empty());
        let second = d.due(330 * S);
        assert_eq!(second[0].firing.len(), 2);
        // Nothing new: silent until the repeat interval.
        assert!(d.due(630 * S).is_empty());
        assert!(d.due(3600 * S).is_empty());
        assert_eq!(
            d.due(3930 * S).len(),
            1,
            "repeat_interval after the last send"
        );
    }

    #[test]
    fn resolves_are_sent_once_when_asked_for() {
        let mut d = Dispatcher::default();
        let root = route();
        d.update(&root, &[], &[], &[alert("a", true, &[])], 0);
        d.due(30 * S);
        d.update(&root, &[], &[], &[alert("a", false, &[])], 100 * S);
        let flush = d.due(330 * S);
        assert_eq!(flush[0].resolved, vec!["a".to_string()]);
        assert!(flush[0].firing.is_empty());
        d.update(&root, &[], &[], &[alert("a", false, &[])], 400 * S);
        assert!(d.due(630 * S).is_empty(), "a resolve is sent once");

        let mut quiet = Dispatcher::default();
        let no_resolved = Route {
            send_resolved: false,
            ..route()
        };
        quiet.update(&no_resolved, &[], &[], &[alert("a", true, &[])], 0);
        quiet.due(30 * S);
        quiet.update(&no_resolved, &[], &[], &[alert("a", false, &[])], 100 * S);
        assert!(quiet.due(330 * S).is_empty());
    }

    #[test]
    fn the_log_prevents_duplicates_after_a_restart() {
        let mut d = Dispatcher::default();
        let root = route();
        d.update(&root, &[], &[], &[alert("a", true, &[])], 0);
        assert_eq!(d.due(30 * S).len(), 1);
        // Restart: a new dispatcher with the persisted log.
        let mut restarted = Dispatcher::with_log(d.log.clone());
        restarted.update(&root, &[], &[], &[alert("a", true, &[])], 60 * S);
        assert!(restarted.due(90 * S).is_empty(), "already notified");
        restarted.update(
            &root,
            &[],
            &[],
            &[alert("a", true, &[]), alert("b", true, &[])],
            100 * S,
        );
        assert_eq!(restarted.due(400 * S).len(), 1, "news still goes out");
    }

    #[test]
    fn routes_with_matchers_and_continue() {
        let mut root = route();
        root.routes = vec![
            Route {
                receiver: "pager".into(),
                matchers: vec![Matcher::parse("severity=page").unwrap()],
                continue_: true,
                ..route()
            },
            Route {
                receiver: "team".into(),
                matchers: vec![Matcher::parse("service=api").unwrap()],
                ..route()
            },
        ];
        let mut d = Dispatcher::default();
        d.update(
            &root,
            &[],
            &[],
            &[alert("a", true, &[("severity", "page")])],
            0,
        );
        let mut receivers: Vec<String> = d.due(30 * S).into_iter().map(|f| f.receiver).collect();
        receivers.sort();
        assert_eq!(receivers, vec!["pager", "team"]);
    }

    #[test]
    fn inhibition_and_silences_mute_alerts() {
        let root = route();
        let inhibit = vec![Inhibit {
            source: vec![Matcher::parse("severity=page").unwrap()],
            target: vec![Matcher::parse("severity=ticket").unwrap()],
            equal: vec!["service".into()],
        }];
        let mut d = Dispatcher::default();
        d.update(
            &root,
            &inhibit,
            &[],
            &[
                alert("p", true, &[("severity", "page")]),
                alert("t", true, &[("severity", "ticket")]),
            ],
            0,
        );
        let flush = d.due(30 * S);
        assert_eq!(flush[0].firing, vec!["p".to_string()]);

        let silence = Silence {
            id: "s1".into(),
            matchers: vec![Matcher::parse("id=a").unwrap()],
            starts_at_ms: 0,
            ends_at_ms: 100 * S,
            created_by: "me".into(),
            comment: String::new(),
        };
        let mut d = Dispatcher::default();
        d.update(
            &root,
            &[],
            std::slice::from_ref(&silence),
            &[alert("a", true, &[])],
            0,
        );
        assert!(d.due(30 * S).is_empty());
        // Once the silence expires the alert is news.
        d.update(
            &root,
            &[],
            std::slice::from_ref(&silence),
            &[alert("a", true, &[])],
            200 * S,
        );
        assert_eq!(d.due(230 * S).len(), 1);
    }
}
