//! AES-256-GCM behind one small trait, with two independent implementations:
//! `ring` (the fast path used for every frame) and RustCrypto's `aes-gcm`
//! (a second implementation the tests cross-check byte for byte).
//!
//! Only 96-bit nonces and 128-bit tags are used anywhere in DriftDB.

use super::keys::SecretKey;

/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Authentication tag length in bytes.
pub const TAG_LEN: usize = 16;

/// Authentication failed (or the input was too short to hold a tag).
/// Carries no detail on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AeadError;

/// Which implementation of AES-256-GCM to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `ring` (assembly, AES-NI/CLMUL): the default.
    Ring,
    /// RustCrypto `aes-gcm`: the independent second implementation.
    RustCrypto,
}

/// An AES-256-GCM key ready for use.
pub trait Cipher: Send + Sync {
    /// Encrypt `buf` in place and return the 16-byte tag.
    fn seal_detached(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError>;
    /// Encrypt `buf` in place and append the 16-byte tag.
    fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut Vec<u8>) -> Result<(), AeadError> {
        let tag = self.seal_detached(nonce, aad, buf)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }
    /// Verify and decrypt `buf` (ciphertext followed by tag) in place; on
    /// success returns the plaintext length (a prefix of `buf`). On failure
    /// the whole buffer is zeroed, so no unauthenticated plaintext is left
    /// where the caller can see it.
    fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError>;
    /// The backend behind this cipher.
    fn backend(&self) -> Backend;
}

/// Build a cipher for `key` on the given backend.
pub fn cipher(backend: Backend, key: &SecretKey) -> Box<dyn Cipher> {
    match backend {
        Backend::Ring => Box::new(RingCipher::new(key)),
        Backend::RustCrypto => Box::new(RustCryptoCipher::new(key)),
    }
}

/// Build a cipher on the default (fast) backend.
pub fn default_cipher(key: &SecretKey) -> Box<dyn Cipher> {
    cipher(Backend::Ring, key)
}

struct RingCipher(ring::aead::LessSafeKey);

impl RingCipher {
    fn new(key: &SecretKey) -> Self {
        // AES_256_GCM accepts exactly 32 bytes, which SecretKey guarantees.
        let unbound = match ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, key.expose()) {
            Ok(k) => k,
            Err(_) => unreachable!("AES-256 key is 32 bytes by construction"),
        };
        RingCipher(ring::aead::LessSafeKey::new(unbound))
    }
}

impl Cipher for RingCipher {
    fn seal_detached(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = self.0.seal_in_place_separate_tag(n, ring::aead::Aad::from(aad), buf).map_err(|_| AeadError)?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_ref());
        Ok(t)
    }

    fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError> {
        if buf.len() < TAG_LEN {
            return Err(AeadError);
        }
        let n = ring::aead::Nonce::assume_unique_for_key(*nonce);
        match self.0.open_in_place(n, ring::aead::Aad::from(aad), buf) {
            Ok(pt) => Ok(pt.len()),
            Err(_) => {
                zeroize::Zeroize::zeroize(buf);
                Err(AeadError)
            }
        }
    }

    fn backend(&self) -> Backend {
        Backend::Ring
    }
}

struct RustCryptoCipher(aes_gcm::Aes256Gcm);

impl RustCryptoCipher {
    fn new(key: &SecretKey) -> Self {
        use aes_gcm::KeyInit;
        RustCryptoCipher(aes_gcm::Aes256Gcm::new(key.expose().into()))
    }
}

impl Cipher for RustCryptoCipher {
    fn seal_detached(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<[u8; TAG_LEN], AeadError> {
        use aes_gcm::AeadInOut;
        let tag = self.0.encrypt_inout_detached(nonce.into(), aad, buf.into()).map_err(|_| AeadError)?;
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag.as_slice());
        Ok(t)
    }

    fn open(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], buf: &mut [u8]) -> Result<usize, AeadError> {
        use aes_gcm::AeadInOut;
        let Some(ct_len) = buf.len().checked_sub(TAG_LEN) else {
            return Err(AeadError);
        };
        let (ct, tag) = buf.split_at_mut(ct_len);
        let tag = aes_gcm::Tag::try_from(&*tag).map_err(|_| AeadError)?;
        match self.0.decrypt_inout_detached(nonce.into(), aad, ct.into(), &tag) {
            Ok(()) => Ok(ct_len),
            Err(_) => {
                zeroize::Zeroize::zeroize(buf);
                Err(AeadError)
            }
        }
    }

    fn backend(&self) -> Backend {
        Backend::RustCrypto
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    proptest! {
        #[test]
        fn backends_agree_byte_for_byte_and_decrypt_each_other(
            k in any::<[u8; 32]>(), nonce in any::<[u8; 12]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            pt in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let key = SecretKey::from_bytes(k);
            let r = cipher(Backend::Ring, &key);
            let c = cipher(Backend::RustCrypto, &key);
            let mut a = pt.clone();
            r.seal(&nonce, &aad, &mut a).unwrap();
            let mut b = pt.clone();
            c.seal(&nonce, &aad, &mut b).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.len(), pt.len() + TAG_LEN);
            let mut x = a.clone();
            let n = c.open(&nonce, &aad, &mut x).unwrap();
            prop_assert_eq!(&x[..n], &pt[..]);
            let mut y = b.clone();
            let n = r.open(&nonce, &aad, &mut y).unwrap();
            prop_assert_eq!(&y[..n], &pt[..]);
        }

        #[test]
        fn any_flip_fails_on_both_and_leaves_no_plaintext(
            pt in proptest::collection::vec(1u8..=255, 1..256), pos in any::<usize>(), bit in 0u8..8,
        ) {
            let key = key(7);
            let nonce = [3u8; 12];
            for backend in [Backend::Ring, Backend::RustCrypto] {
                let c = cipher(backend, &key);
                let mut ct = pt.clone();
                c.seal(&nonce, b"aad", &mut ct).unwrap();
                let p = pos % ct.len();
                ct[p] ^= 1 << bit;
                prop_assert_eq!(c.open(&nonce, b"aad", &mut ct), Err(AeadError));
                prop_assert!(ct.iter().all(|&b| b == 0), "buffer not wiped after failed open");
            }
        }
    }

    #[test]
    fn wrong_aad_or_nonce_fails() {
        for backend in [Backend::Ring, Backend::RustCrypto] {
            let c = cipher(backend, &key(1));
            let mut ct = b"hello".to_vec();
            c.seal(&[0; 12], b"a", &mut ct).unwrap();
            assert!(c.open(&[0; 12], b"b", &mut ct.clone()).is_err());
            assert!(c.open(&[1; 12], b"a", &mut ct.clone()).is_err());
            assert!(c.open(&[0; 12], b"a", &mut ct[..10].to_vec()).is_err());
            assert!(c.open(&[0; 12], b"a", &mut ct[..3].to_vec()).is_err());
            assert_eq!(c.open(&[0; 12], b"a", &mut ct).unwrap(), 5);
        }
    }
}
