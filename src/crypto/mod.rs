//! Cryptography: AEAD backends, key derivation, key types and master-key sources.
//!
//! Every key lives in a [`keys::SecretKey`]: wiped on drop, never printable.

/// AES-256-GCM on two backends (for the benchmarks' cross-check; not an API).
#[doc(hidden)]
pub mod aead;
pub(crate) mod kdf;
pub mod keys;
pub mod keysource;

#[cfg(test)]
pub(crate) mod nonce_audit;

/// Fill `buf` from the operating system's CSPRNG.
pub(crate) fn random_bytes(buf: &mut [u8]) -> crate::Result<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(buf)
        .map_err(|_| crate::Error::KeySource("the operating system's random number generator failed".into()))
}
