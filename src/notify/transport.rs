//! The SMTP transport (lettre, tokio, rustls) for `tls = none | starttls | implicit`.
//!
//! - `none`: plain SMTP, for a trusted local relay.
//! - `starttls`: connect in plain text and *require* the STARTTLS upgrade before anything else
//!   (lettre's `Tls::Required`: no silent downgrade, credentials never go out in the clear).
//! - `implicit`: TLS from the first byte (SMTPS, usually port 465) — the mode Alertmanager users
//!   confuse with STARTTLS.
//!
//! Credentials come from [`SmtpSettings`]; nothing here logs them.

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, Tokio1Executor};

use super::{NotifyError, SmtpSettings, TlsMode};

pub type SmtpTransport = AsyncSmtpTransport<Tokio1Executor>;

/// Builds the transport with the usual roots (webpki-roots). Call it inside a tokio runtime
/// (the connection pool spawns its reaper task).
pub fn build(settings: &SmtpSettings) -> Result<SmtpTransport, NotifyError> {
    build_with_roots(settings, &[])
}

/// Builds the transport, also trusting the PEM certificates in `extra_roots` (a private CA, or
/// a test server's self-signed certificate).
pub fn build_with_roots(
    settings: &SmtpSettings,
    extra_roots: &[Vec<u8>],
) -> Result<SmtpTransport, NotifyError> {
    let mut builder = SmtpTransport::builder_dangerous(settings.host.clone())
        .port(settings.port)
        .timeout(Some(settings.timeout));
    if settings.tls != TlsMode::None {
        let mut params = TlsParameters::builder(settings.host.clone());
        for pem in extra_roots {
            let cert = Certificate::from_pem(pem)
                .map_err(|e| NotifyError::Settings(format!("root certificate: {e}")))?;
            params = params.add_root_certificate(cert);
        }
        let params = params
            .build()
            .map_err(|e| NotifyError::Settings(format!("tls: {e}")))?;
        builder = builder.tls(match settings.tls {
            TlsMode::StartTls => Tls::Required(params),
            _ => Tls::Wrapper(params),
        });
    }
    if let Some(name) = settings.hello_name.as_deref().filter(|n| !n.is_empty()) {
        builder = builder.hello_name(ClientId::Domain(name.to_string()));
    }
    match (&settings.username, &settings.password) {
        (Some(user), Some(password)) => {
            builder = builder
                .credentials(Credentials::new(user.clone(), password.0.clone()))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        (Some(_), None) => {
            return Err(NotifyError::Settings(
                "a username without a password".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(NotifyError::Settings(
                "a password without a username".into(),
            ));
        }
        (None, None) => {}
    }
    Ok(builder.build())
}

/// "smtp.example.com:587 (starttls, auth)" — for logs; never shows credentials.
pub fn describe(settings: &SmtpSettings) -> String {
    let tls = match settings.tls {
        TlsMode::None => "plain",
        TlsMode::StartTls => "starttls",
        TlsMode::Implicit => "implicit tls",
    };
    let auth = if settings.username.is_some() {
        ", auth"
    } else {
        ""
    };
    format!("{}:{} ({tls}{auth})", settings.host, settings.port)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::notify::Secret;

    fn settings(tls: TlsMode) -> SmtpSettings {
        SmtpSettings {
            host: "127.0.0.1".into(),
            port: 2525,
            tls,
            username: Some("alerts".into()),
            password: Some(Secret("hunter2-secret".into())),
            timeout: Duration::from_secs(5),
            hello_name: Some("redline.test".into()),
        }
    }

    #[tokio::test]
    async fn builds_every_tls_mode() {
        for tls in [TlsMode::None, TlsMode::StartTls, TlsMode::Implicit] {
            build(&settings(tls)).expect("builds");
        }
    }

    #[test]
    fn credentials_never_show() {
        let s = settings(TlsMode::StartTls);
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!describe(&s).contains("hunter2"));
        assert!(!describe(&s).contains("alerts"));
    }

    #[test]
    fn half_credentials_are_rejected() {
        let mut s = settings(TlsMode::None);
        s.password = None;
        assert!(build(&s).is_err());
    }
}
