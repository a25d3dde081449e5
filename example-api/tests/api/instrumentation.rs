//! Spans that code other than the API's own helpers adds — `tracing` spans through the
//! service's `tracing` layer, and libraries' spans through the global tracer provider — join
//! the request's trace and are exported with the service's resource, through the same
//! collector on port 0 as in `telemetry`.

use crate::telemetry::{attr, find_span, harness, string};
use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt as _;

/// `POST /v1/products` with an `Idempotency-Key` runs through a `#[tracing::instrument]`ed
/// function: under a subscriber with the service's layer, that `tracing` span is a child of the
/// SERVER span, the statements it runs are children of it, and it carries its fields.
///
/// A current-thread runtime (the default of `#[tokio::test]`) runs the server's tasks on this
/// thread, so a thread-local default subscriber sees them and no other test is affected.
#[tokio::test]
async fn tracing_spans_in_handlers_join_the_request_trace() {
    let h = harness().await;
    let subscriber = tracing_subscriber::registry().with(h.tel.tracing_layer());
    let _default = tracing::subscriber::set_default(subscriber);
    let token = h.app.token().await;
    let post = || {
        h.app
            .http
            .post(h.app.url("/v1/products"))
            .bearer_auth(&token)
            .header("idempotency-key", "traced-1")
            .json(&json!({"name": "Traced", "price_cents": 100, "category_id": 2}))
            .send()
    };
    assert_eq!(post().await.unwrap().status(), 201);
    let server = find_span(&h, |s| s.name == "POST /v1/products").await;
    let idem = find_span(&h, |s| {
        s.name == "idempotency" && s.trace_id == server.trace_id
    })
    .await;
    assert_eq!(
        idem.parent_span_id, server.span_id,
        "a child of the request"
    );
    assert_eq!(idem.kind(), SpanKind::Internal);
    assert_eq!(
        attr(&idem, "idempotency.replayed"),
        Some(Any::BoolValue(false))
    );
    // The key's claim and the product's insert ran inside the `tracing` span.
    for table in ["idempotency_keys", "products"] {
        let insert = find_span(&h, |s| {
            s.trace_id == server.trace_id && attr(s, "db.collection.name") == string(table)
        })
        .await;
        assert_eq!(insert.parent_span_id, idem.span_id, "{table}: {insert:?}");
    }

    // The replay is recorded on its own request's span.
    let again = post().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replay = find_span(&h, |s| {
        s.name == "idempotency" && attr(s, "idempotency.replayed") == Some(Any::BoolValue(true))
    })
    .await;
    assert_ne!(replay.trace_id, server.trace_id);
    h.app.stop().await;
}

/// After `install_global`, a library that instruments itself through `opentelemetry::global`
/// records into the service's provider: its span is exported with the service's resource and
/// nests under the span current where it runs.
#[tokio::test]
async fn libraries_record_through_the_global_provider() {
    let h = harness().await;
    h.tel.install_global();
    let request = h.tel.tracer.start("request");
    let request_id = request.span_context().span_id();
    let cx = opentelemetry::Context::current_with_span(request);
    {
        let _attached = cx.clone().attach();
        let mut span = opentelemetry::global::tracer("some-library").start("library work");
        span.end();
    }
    cx.span().end();
    h.tel.flush().await;
    let lib = find_span(&h, |s| s.name == "library work").await;
    assert_eq!(lib.parent_span_id, request_id.to_bytes().to_vec());
    let service = h
        .collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .find(|(_, s)| s.name == "library work")
        .map(|(service, _)| service.clone());
    assert_eq!(service.as_deref(), Some("example-api"));
    h.app.stop().await;
}
