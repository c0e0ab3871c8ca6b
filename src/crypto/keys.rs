//! Key types. Key bytes are held in zeroizing storage, wiped on drop, and the
//! types implement neither `Debug` nor `Display`, so a key cannot reach a log,
//! an error message or a panic message by formatting.

use zeroize::Zeroizing;

/// Length of every symmetric key in DriftDB (AES-256).
pub const KEY_LEN: usize = 32;

/// A 256-bit secret key: a master key (KEK), a data key (DEK) or a derived key.
///
/// Deliberately not `Debug`, `Display`, `Clone` or `Copy`-able by accident:
/// cloning is explicit through [`SecretKey::duplicate`].
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl SecretKey {
    /// Wrap raw key bytes (the caller's copy should be zeroized by the caller).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        SecretKey(Zeroizing::new(bytes))
    }

    /// Build from a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        k.copy_from_slice(bytes);
        Some(SecretKey(k))
    }

    /// Build a key by filling zeroized storage in place (no stray copies).
    pub fn fill<E>(f: impl FnOnce(&mut [u8; KEY_LEN]) -> Result<(), E>) -> Result<Self, E> {
        let mut k = SecretKey(Zeroizing::new([0u8; KEY_LEN]));
        f(&mut k.0)?;
        Ok(k)
    }

    /// A fresh random key from the operating system's CSPRNG.
    pub fn random() -> crate::Result<Self> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        super::random_bytes(&mut k[..])?;
        Ok(SecretKey(k))
    }

    /// The key bytes. Keep the borrow short.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// An explicit copy (also zeroized on drop).
    pub fn duplicate(&self) -> Self {
        SecretKey(Zeroizing::new(*self.0))
    }
}

/// Constant-time equality of two byte strings (used for key check values).
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
