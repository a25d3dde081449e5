//! Password hashes: argon2id PHC strings (a random salt each, the `argon2` crate's default cost)
//! computed on the blocking pool, at most a few at once, so that logins can neither stall the
//! async executor nor spend every core.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// Every hashing slot stayed busy for the whole wait: the caller should answer 503.
    #[error("too many logins at once; retry shortly")]
    Busy,
    #[error("password hash: {0}")]
    Hash(String),
    #[error("password hashing stopped: {0}")]
    Join(String),
}

/// A fresh argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`) for
/// `password`. Blocking (tens of milliseconds): call it off the executor.
pub fn hash(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `stored`. Blocking, as [`hash`].
fn matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// A hash no password matches, verified for unknown users so that the answer takes as long
/// as for known ones (the time does not tell which usernames exist).
fn decoy() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let random = format!("{:032x}", rand::random::<u128>());
        hash(&random).unwrap_or_default()
    })
}

/// Verifies passwords with at most `slots` hashes running at once.
pub struct Passwords {
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl Passwords {
    /// `slots` hashes at once (at least one); a login waits at most `wait` for a slot.
    pub fn new(slots: usize, wait: Duration) -> Passwords {
        Passwords {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            wait,
        }
    }

    /// Hashing slots free now.
    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    /// Whether `password` matches `stored` (`None`: no such user, always false, at the same
    /// cost). The slot is held by the blocking task itself, so a client that goes away does
    /// not free it while its hash still runs.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let slot = tokio::time::timeout(self.wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| PasswordError::Busy)?
            .map_err(|e| PasswordError::Join(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            match stored {
                Some(stored) => matches(&password, &stored),
                None => {
                    matches(&password, decoy());
                    false
                }
            }
        })
        .await
        .map_err(|e| PasswordError::Join(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_salted_argon2id_and_verify() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "a random salt each time");
        assert!(matches("correct horse", &a));
        assert!(matches("correct horse", &b));
        assert!(!matches("correct horse!", &a));
        assert!(!matches("correct horse", "not a hash"));
    }

    #[tokio::test]
    async fn a_busy_hasher_refuses_instead_of_queueing_forever() {
        let passwords = Passwords::new(1, Duration::from_millis(50));
        let stored = hash("pw").unwrap();
        assert!(
            passwords
                .verify("pw".into(), Some(stored.clone()))
                .await
                .unwrap()
        );
        assert!(!passwords.verify("pw".into(), None).await.unwrap());
        let held = passwords.slots.clone().acquire_owned().await.unwrap();
        assert!(matches!(
            passwords.verify("pw".into(), Some(stored)).await,
            Err(PasswordError::Busy)
        ));
        drop(held);
        assert_eq!(passwords.free_slots(), 1);
    }
}
