//! `POST /v1/auth/token`: a username and password for an API key. Two sliding-window limits
//! guard it — per client IP and username (guessing one account's password) and per client IP
//! across usernames (password spraying) — and the password is checked against its argon2id
//! hash off the executor, a bounded number at once ([`crate::passwords`]).

use super::{ApiError, AppState, Client};
use crate::db::queries;
use crate::db::seed::now_ms;
use crate::passwords::PasswordError;
use crate::ratelimit;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

/// Longest accepted username and password, in bytes: nothing to hash is unbounded.
const MAX_USERNAME: usize = 128;
const MAX_PASSWORD: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenInput {
    username: String,
    password: String,
}

pub async fn token(
    State(st): State<AppState>,
    Extension(client): Extension<Client>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: TokenInput = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if input.username.len() > MAX_USERNAME || input.password.len() > MAX_PASSWORD {
        return Err(ApiError::BadRequest(format!(
            "username and password are at most {MAX_USERNAME} and {MAX_PASSWORD} bytes"
        )));
    }
    let per_ip = st
        .limiter
        .check(&st.cfg.rate_auth_ip, &format!("auth-ip:{}", client.ip))
        .await;
    if !per_ip.allowed {
        return Ok(ratelimit::reject(&per_ip));
    }
    let decision = st
        .limiter
        .check(
            &st.cfg.rate_auth,
            &format!("{}|{}", client.ip, input.username),
        )
        .await;
    if !decision.allowed {
        return Ok(ratelimit::reject(&decision));
    }
    let user = input.username.clone();
    let stored = st
        .db
        .read(None, move |sql| {
            queries::password_hash(sql, &user).map_err(ApiError::from)
        })
        .await?;
    let ok = match st.passwords.verify(input.password, stored).await {
        Ok(ok) => ok,
        Err(PasswordError::Busy) => {
            return Err(ApiError::Unavailable(PasswordError::Busy.to_string()));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let mut resp = if ok {
        let key = format!("rk_{}", hex::encode(rand::random::<[u8; 16]>()));
        let (k, u) = (key.clone(), input.username.clone());
        st.db
            .write(None, move |sql| {
                queries::insert_api_key(sql, &k, &u, now_ms()).map_err(ApiError::from)
            })
            .await?;
        (
            StatusCode::CREATED,
            axum::Json(json!({ "api_key": key, "token_type": "Bearer" })),
        )
            .into_response()
    } else {
        ApiError::Unauthorized.into_response()
    };
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The tighter of the two limits is the one the client should see.
    let shown = if per_ip.remaining < decision.remaining {
        &per_ip
    } else {
        &decision
    };
    shown.apply(resp.headers_mut());
    Ok(resp)
}
