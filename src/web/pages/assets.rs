//! Static assets embedded in the binary (`/assets/…`, with an ETag).

use super::*;

// ---------------------------------------------------------------------------------------------
// Static assets

pub(super) struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

pub(super) const ASSETS: [Asset; 3] = [
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../assets/style.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("../assets/favicon.svg"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/app.js"),
    },
];

/// A strong ETag from the content (FNV-1a, stable across builds of the same content).
pub(super) fn etag(body: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// The URL of an asset, versioned by its ETag so it can be cached for long.
pub fn asset_url(name: &str) -> String {
    let version = ASSETS
        .iter()
        .find(|a| a.name == name)
        .map(|a| etag(a.body))
        .unwrap_or_default();
    format!("/assets/{name}?v={}", version.trim_matches('"'))
}

pub(super) async fn asset(
    axum::extract::Path(file): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return (StatusCode::NOT_FOUND, "no such asset\n").into_response();
    };
    let tag = etag(asset.body);
    let cache = (
        header::CACHE_CONTROL,
        "public, max-age=86400, must-revalidate",
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, tag.as_str()), cache],
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::ETAG, tag.as_str()),
            cache,
        ],
        asset.body,
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------------
// Errors
