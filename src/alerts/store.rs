//! Alerting's durable state: current alerts, every transition, the notification log and
//! silences. On its own connection, used from blocking threads only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, TransactionBehavior, params};

use crate::alerts::engine::{Alert, AlertState, FiringPeriod, Transition};
use crate::alerts::routing::{LogEntry, Matcher, Silence};
use crate::store::{Commits, Db, StoreError};

#[derive(Clone)]
pub struct AlertStore {
    conn: Arc<Mutex<Connection>>,
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("serializable")
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl AlertStore {
    /// Alert state on a connection of its own to `db`.
    pub fn open(db: &Db) -> Result<Self, StoreError> {
        let conn = db.connection(Commits::SurviveCrashes)?;
        Ok(AlertStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the blocking pool with the connection.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Corrupt(format!("alert store task failed: {e}")))?
    }
}

/// Replaces the stored alert set and appends the transitions, in one transaction.
pub fn save_evaluation(
    conn: &mut Connection,
    alerts: &[Alert],
    transitions: &[Transition],
) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM alert_state", [])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO alert_state (alert_key, rule, labels, state, active_at_ms, fired_at_ms,
               resolved_at_ms, keep_firing_since_ms, value, annotations, last_eval_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for a in alerts {
            insert.execute(params![
                a.key,
                a.rule,
                json(&a.labels),
                a.state.as_str(),
                a.active_at_ms,
                a.fired_at_ms,
                a.resolved_at_ms,
                a.keep_firing_since_ms,
                a.value,
                json(&a.annotations),
                a.last_eval_ms
            ])?;
        }
        let mut history = tx.prepare_cached(
            "INSERT INTO alert_history (alert_key, rule, labels, from_state, to_state, value, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for t in transitions {
            history.execute(params![
                t.key,
                t.rule,
                json(&t.labels),
                t.from,
                t.to,
                t.value,
                t.at_ms
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn load_alerts(conn: &mut Connection) -> Result<Vec<Alert>, StoreError> {
    let mut statement = conn.prepare(
        "SELECT alert_key, rule, labels, state, active_at_ms, fired_at_ms, resolved_at_ms,
                keep_firing_since_ms, value, annotations, last_eval_ms FROM alert_state",
    )?;
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let state: String = row.get(3)?;
        out.push(Alert {
            key: row.get(0)?,
            rule: row.get(1)?,
            labels: from_json(&row.get::<_, String>(2)?)?,
            state: AlertState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("alert state {state:?}")))?,
            active_at_ms: row.get(4)?,
            fired_at_ms: row.get(5)?,
            resolved_at_ms: row.get(6)?,
            keep_firing_since_ms: row.get(7)?,
            value: row.get(8)?,
            annotations: from_json(&row.get::<_, String>(9)?)?,
            last_eval_ms: row.get(10)?,
        });
    }
    Ok(out)
}

/// A stored transition, for the dashboard's history.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistoryEntry {
    pub rule: String,
    pub labels: BTreeMap<String, String>,
    pub from: String,
    pub to: String,
    pub value: Option<f64>,
    pub at_ms: i64,
}

pub fn history(
    conn: &mut Connection,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT rule, labels, from_state, to_state, value, at_ms FROM alert_history
         WHERE at_ms >= ?1 ORDER BY at_ms DESC, id DESC LIMIT ?2",
    )?;
    let mut rows = statement.query(params![since_ms, limit as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(HistoryEntry {
            rule: row.get(0)?,
            labels: from_json(&row.get::<_, String>(1)?)?,
            from: row.get(2)?,
            to: row.get(3)?,
            value: row.get(4)?,
            at_ms: row.get(5)?,
        });
    }
    Ok(out)
}

/// The most recent ended firing periods (oldest first, at most `limit`), rebuilt from the
/// transition history so charts shade alerts that fired before this process started.
pub fn firing_periods(
    conn: &mut Connection,
    limit: usize,
) -> Result<Vec<FiringPeriod>, StoreError> {
    // A period is two transitions (into firing, out of it); other transitions interleave, so
    // read a generous tail of the history rather than an exact count.
    let mut statement = conn.prepare_cached(
        "SELECT alert_key, rule, labels, from_state, to_state, at_ms FROM
           (SELECT id, alert_key, rule, labels, from_state, to_state, at_ms FROM alert_history
            ORDER BY at_ms DESC, id DESC LIMIT ?1)
         ORDER BY at_ms, id",
    )?;
    let mut rows = statement.query(params![(limit * 8) as i64])?;
    let mut fired: HashMap<String, i64> = HashMap::new();
    let mut periods = std::collections::VecDeque::new();
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        let (from, to): (String, String) = (row.get(3)?, row.get(4)?);
        let at_ms: i64 = row.get(5)?;
        if to == "firing" {
            fired.insert(key, at_ms);
        } else if from == "firing"
            && let Some(from_ms) = fired.remove(&key)
        {
            periods.push_back(FiringPeriod {
                rule: row.get(1)?,
                labels: from_json(&row.get::<_, String>(2)?)?,
                from_ms,
                to_ms: Some(at_ms),
            });
            if periods.len() > limit {
                periods.pop_front();
            }
        }
    }
    Ok(periods.into())
}

/// Deletes history older than `before_ms` (the history is bounded like everything else).
pub fn prune_history(conn: &mut Connection, before_ms: i64) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM alert_history WHERE at_ms < ?1",
        params![before_ms],
    )?;
    Ok(())
}

pub fn save_log(conn: &mut Connection, log: &HashMap<String, LogEntry>) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM notification_log", [])?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO notification_log (group_key, receiver, firing_hash, resolved_hash, last_sent_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (key, entry) in log {
            insert.execute(params![
                key,
                entry.receiver,
                json(&entry.firing),
                json(&entry.resolved),
                entry.last_sent_ms
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn load_log(conn: &mut Connection) -> Result<HashMap<String, LogEntry>, StoreError> {
    let mut statement =
        conn.prepare("SELECT group_key, receiver, firing_hash, resolved_hash, last_sent_ms FROM notification_log")?;
    let mut rows = statement.query([])?;
    let mut out = HashMap::new();
    while let Some(row) = rows.next()? {
        out.insert(
            row.get::<_, String>(0)?,
            LogEntry {
                receiver: row.get(1)?,
                firing: from_json(&row.get::<_, String>(2)?)?,
                resolved: from_json(&row.get::<_, String>(3)?)?,
                last_sent_ms: row.get(4)?,
            },
        );
    }
    Ok(out)
}

pub fn save_silence(conn: &mut Connection, silence: &Silence) -> Result<(), StoreError> {
    let matchers: Vec<String> = silence.matchers.iter().map(|m| m.to_string()).collect();
    conn.execute(
        "INSERT OR REPLACE INTO silences (id, matchers, starts_at_ms, ends_at_ms, created_by, comment)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            silence.id,
            json(&matchers),
            silence.starts_at_ms,
            silence.ends_at_ms,
            silence.created_by,
            silence.comment
        ],
    )?;
    Ok(())
}

pub fn delete_silence(conn: &mut Connection, id: &str) -> Result<bool, StoreError> {
    Ok(conn.execute("DELETE FROM silences WHERE id = ?1", params![id])? > 0)
}

/// Silences that have not yet expired (expired ones are deleted).
pub fn load_silences(conn: &mut Connection, now_ms: i64) -> Result<Vec<Silence>, StoreError> {
    conn.execute(
        "DELETE FROM silences WHERE ends_at_ms <= ?1",
        params![now_ms],
    )?;
    let mut statement = conn
        .prepare("SELECT id, matchers, starts_at_ms, ends_at_ms, created_by, comment FROM silences ORDER BY ends_at_ms")?;
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let texts: Vec<String> = from_json(&row.get::<_, String>(1)?)?;
        let matchers = texts
            .iter()
            .map(|t| Matcher::parse(t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Silence {
            id: row.get(0)?,
            matchers,
            starts_at_ms: row.get(2)?,
            ends_at_ms: row.get(3)?,
            created_by: row.get(4)?,
            comment: row.get(5)?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(key: &str, from: &'static str, to: &'static str, at_ms: i64) -> Transition {
        Transition {
            key: key.to_string(),
            rule: format!("rule-{key}"),
            labels: BTreeMap::from([("service".to_string(), key.to_string())]),
            from,
            to,
            value: Some(1.0),
            at_ms,
        }
    }

    #[test]
    fn firing_periods_are_rebuilt_from_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut conn) = crate::store::Db::open(&dir.path().join("redline.db")).unwrap();
        let history = [
            transition("a", "inactive", "pending", 1_000),
            transition("a", "pending", "firing", 2_000),
            transition("b", "pending", "firing", 2_500),
            transition("a", "firing", "resolved", 5_000),
            transition("a", "resolved", "pending", 6_000),
            transition("a", "pending", "firing", 7_000),
            transition("a", "firing", "resolved", 9_000),
            // b is still firing: the engine's current alerts cover it, not the history.
        ];
        save_evaluation(&mut conn, &[], &history).unwrap();
        let periods = firing_periods(&mut conn, 10).unwrap();
        let spans: Vec<_> = periods
            .iter()
            .map(|p| (p.rule.as_str(), p.from_ms, p.to_ms))
            .collect();
        assert_eq!(
            spans,
            [
                ("rule-a", 2_000, Some(5_000)),
                ("rule-a", 7_000, Some(9_000))
            ]
        );
        assert_eq!(periods[0].labels["service"], "a");
        // Bounded: only the most recent.
        let last = firing_periods(&mut conn, 1).unwrap();
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].from_ms, 7_000);
    }
}
