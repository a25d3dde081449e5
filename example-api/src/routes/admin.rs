//! The admin endpoint, served only on a loopback listener: read and change fault injection,
//! and read internal counters (used by the demo scenario and the tests).

use super::AppState;
use crate::faults::FaultSettings;
use crate::resilience::limit::Rejection;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/faults", get(get_faults).put(put_faults))
        .route("/admin/state", get(state_view))
        .with_state(state)
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
        },
    }))
}
