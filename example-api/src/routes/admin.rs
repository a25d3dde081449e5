//! The admin endpoint, served only on a loopback listener: read and change fault injection,
//! and read internal counters (used by the demo scenario and the tests).
//!
//! A loopback listener is still reachable from a browser through DNS rebinding (a page on
//! `evil.example` re-points its name at 127.0.0.1 and sends `PUT /admin/faults`), so requests
//! are served only when their Host is an IP address or `localhost`: a rebinding page can only
//! send its own DNS name.

use super::AppState;
use crate::faults::FaultSettings;
use crate::resilience::limit::Rejection;
use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/state", get(state_view))
        .layer(axum::middleware::from_fn(local_host_only))
        .with_state(state)
}

/// Whether a Host header value (`name[:port]`, `[v6][:port]`) names this machine: an IP
/// address or `localhost`.
pub fn is_local_host(host: &str) -> bool {
    if host.contains(['@', '/']) {
        return false;
    }
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    let name = authority.host();
    let port_ok = match authority.as_str().strip_prefix(name) {
        Some("") => true,
        Some(rest) => rest
            .strip_prefix(':')
            .is_some_and(|p| p.parse::<u16>().is_ok()),
        None => false,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    port_ok
        && (bare.parse::<std::net::IpAddr>().is_ok()
            || name.trim_end_matches('.').eq_ignore_ascii_case("localhost"))
}

/// 421 Misdirected Request unless the Host (header, or the URI's authority) is local.
async fn local_host_only(request: Request, next: Next) -> Response {
    let header_host = request
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"));
    let uri_host = request.uri().authority().map(|a| a.as_str());
    let hosts = [header_host, uri_host];
    let named = hosts.iter().flatten().count() > 0;
    if named && hosts.into_iter().flatten().all(is_local_host) {
        return next.run(request).await;
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        "the admin endpoint answers only to an IP address or localhost in Host\n",
    )
        .into_response()
}

async fn get_faults(State(st): State<AppState>) -> Json<FaultSettings> {
    Json(st.faults.get())
}

async fn put_faults(
    State(st): State<AppState>,
    Json(f): Json<FaultSettings>,
) -> Json<FaultSettings> {
    st.faults.set(f);
    Json(st.faults.get())
}

async fn state_view(State(st): State<AppState>) -> Json<Value> {
    let c = st.db.counters();
    Json(json!({
        "breaker": st.recs.breaker().state_name(),
        "downstream": {
            "attempts": st.recs.attempts(),
            "received": st.downstream_received.load(Ordering::Relaxed),
        },
        "shed": {
            "limit": st.shed.limit(),
            "in_flight": st.shed.in_flight(),
            "admit_share": st.shed.admit_share(),
            "rejected": Rejection::ALL
                .iter()
                .map(|&r| (r.as_str(), st.shed.rejected(r)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        },
        "db": {
            "statements": c.statements.load(Ordering::Relaxed),
            "primary_reads": c.primary_reads.load(Ordering::Relaxed),
            "replica_reads": c.replica_reads.load(Ordering::Relaxed),
            "system": st.db.system_name(),
            "standbys": st.db.replica_set().map(|set| {
                set.replicas
                    .iter()
                    .map(|r| {
                        json!({
                            "name": r.info.name,
                            "server": format!("{}:{}", r.info.host, r.info.port),
                            "in_rotation": r.in_rotation(),
                            "lag_seconds": r.lag().as_secs_f64(),
                            "lag_bytes": r.lag_bytes(),
                            "removals": r.removals(),
                            "breaker": r.breaker.state_name(),
                        })
                    })
                    .collect::<Vec<_>>()
            }),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::is_local_host;

    #[test]
    fn only_addresses_and_localhost_are_local() {
        for ok in [
            "127.0.0.1:3001",
            "[::1]:3001",
            "localhost",
            "LocalHost:1",
            "10.0.0.2",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for refused in [
            "evil.example:3001",
            "localhost.evil.example",
            "user@localhost",
            "localhost:x",
            "",
        ] {
            assert!(!is_local_host(refused), "{refused}");
        }
    }
}
