//! Key derivation: HKDF-SHA256 for every sub-key (each with its own label),
//! Argon2id for passphrases.

use super::keys::{KEY_LEN, SecretKey};
use crate::{Error, Result};

/// HKDF labels. Every derived key has its own, so no two purposes can ever
/// share a key.
pub mod label {
    /// Key check value of a master key (stored in the keyring header).
    pub const KEY_CHECK: &[u8] = b"driftdb v1 master key check";
    /// Master key -> key that wraps data keys.
    pub const DEK_WRAP: &[u8] = b"driftdb v1 dek wrap";
    /// Master key + per-write salt -> key that encrypts the keyring body.
    pub const KEYRING: &[u8] = b"driftdb v1 keyring body";
    /// Data key + file header -> key that encrypts the file's frames.
    pub const FRAME: &[u8] = b"driftdb v1 frame key";
}

/// HKDF-SHA256(ikm, salt) expanded with `info` parts concatenated.
pub fn hkdf(ikm: &[u8], salt: Option<&[u8]>, info: &[&[u8]]) -> SecretKey {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(salt, ikm);
    // 32 bytes is far below HKDF-SHA256's 255*32 limit, so expansion cannot fail.
    let r: Result<SecretKey, hkdf::InvalidLength> = SecretKey::fill(|out| hk.expand_multi_info(info, &mut out[..]));
    match r {
        Ok(k) => k,
        Err(_) => unreachable!("32-byte HKDF output is always valid"),
    }
}

/// Argon2id cost parameters for passphrase-derived master keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Params {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 iterations, 1 lane.
    fn default() -> Self {
        Argon2Params { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl Argon2Params {
    /// Upper bounds accepted from a keyring header, so a tampered header
    /// cannot make an opener allocate unbounded memory.
    pub const MAX_M_COST_KIB: u32 = 4 * 1024 * 1024;
    /// Maximum iterations accepted.
    pub const MAX_T_COST: u32 = 64;
    /// Maximum lanes accepted.
    pub const MAX_P_COST: u32 = 16;

    /// The weakest parameters accepted for a new passphrase without an
    /// explicit opt-in: OWASP's minimum for Argon2id (19 MiB, 2 iterations).
    pub const MIN_M_COST_KIB: u32 = 19 * 1024;
    /// See [`Argon2Params::MIN_M_COST_KIB`].
    pub const MIN_T_COST: u32 = 2;

    /// Refuse parameters below the floor ([`Argon2Params::MIN_M_COST_KIB`],
    /// [`Argon2Params::MIN_T_COST`]): a passphrase stretched less than that
    /// is cheap to guess offline from the keyring header.
    pub fn check_strength(&self) -> Result<()> {
        if self.m_cost_kib < Self::MIN_M_COST_KIB || self.t_cost < Self::MIN_T_COST {
            return Err(Error::InvalidArgument(format!(
                "Argon2id with {} KiB and {} iterations is below the minimum of {} MiB and {} iterations (OWASP); allow it explicitly only for tests (--allow-weak-kdf)",
                self.m_cost_kib,
                self.t_cost,
                Self::MIN_M_COST_KIB / 1024,
                Self::MIN_T_COST
            )));
        }
        Ok(())
    }

    /// Check the parameters of a new passphrase: within the bounds, at least
    /// the floor (unless `allow_weak`), and at most the memory an open
    /// allows (`max_kib`), so that the database opens without raising it.
    pub fn check_new(&self, allow_weak: bool, max_kib: u32) -> Result<()> {
        self.validate()?;
        if !allow_weak {
            self.check_strength()?;
        }
        if self.m_cost_kib > max_kib {
            return Err(Error::InvalidArgument(format!(
                "Argon2id with {} MiB is above the {} MiB an open allows by default; every open would need --max-kdf-memory-mib",
                self.m_cost_kib / 1024,
                max_kib / 1024
            )));
        }
        Ok(())
    }

    /// Check the parameters are within the accepted bounds.
    pub fn validate(&self) -> Result<()> {
        if self.t_cost == 0 || self.t_cost > Self::MAX_T_COST {
            return Err(Error::InvalidArgument(format!(
                "argon2 time cost {} out of range 1..={}",
                self.t_cost,
                Self::MAX_T_COST
            )));
        }
        if self.p_cost == 0 || self.p_cost > Self::MAX_P_COST {
            return Err(Error::InvalidArgument(format!(
                "argon2 parallelism {} out of range 1..={}",
                self.p_cost,
                Self::MAX_P_COST
            )));
        }
        if self.m_cost_kib < 8 * self.p_cost || self.m_cost_kib > Self::MAX_M_COST_KIB {
            return Err(Error::InvalidArgument(format!(
                "argon2 memory {} KiB out of range {}..={}",
                self.m_cost_kib,
                8 * self.p_cost,
                Self::MAX_M_COST_KIB
            )));
        }
        Ok(())
    }
}

/// Derive a 256-bit master key from a passphrase with Argon2id.
pub fn argon2id(passphrase: &[u8], salt: &[u8; 16], params: Argon2Params) -> Result<SecretKey> {
    params.validate()?;
    let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(KEY_LEN))
        .map_err(|e| Error::InvalidArgument(format!("argon2 parameters: {e}")))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
    SecretKey::fill(|out| a.hash_password_into(passphrase, salt, &mut out[..]))
        .map_err(|e| Error::KeySource(format!("argon2id failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_give_distinct_keys() {
        let ikm = [9u8; 32];
        let labels = [label::KEY_CHECK, label::DEK_WRAP, label::KEYRING, label::FRAME];
        let keys: Vec<[u8; 32]> = labels.iter().map(|l| *hkdf(&ikm, None, &[l]).expose()).collect();
        for i in 0..keys.len() {
            for j in 0..i {
                assert_ne!(keys[i], keys[j]);
            }
        }
        // Salt and info both matter.
        assert_ne!(hkdf(&ikm, Some(b"a"), &[label::FRAME]).expose(), hkdf(&ikm, Some(b"b"), &[label::FRAME]).expose());
        assert_ne!(hkdf(&ikm, None, &[label::FRAME, b"x"]).expose(), hkdf(&ikm, None, &[label::FRAME, b"y"]).expose());
    }

    #[test]
    fn hkdf_matches_rfc5869_case_1_prefix() {
        // RFC 5869 A.1 (SHA-256): first 32 bytes of OKM.
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0x00..=0x0c).collect();
        let info: Vec<u8> = (0xf0..=0xf9).collect();
        let okm = hkdf(&ikm, Some(&salt), &[&info]);
        let expect = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf";
        let got: String = okm.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expect);
    }

    #[test]
    fn argon2id_depends_on_passphrase_salt_and_params() {
        let p = Argon2Params { m_cost_kib: 64, t_cost: 1, p_cost: 1 };
        let a = argon2id(b"pw", &[1; 16], p).unwrap();
        assert_eq!(a.expose(), argon2id(b"pw", &[1; 16], p).unwrap().expose());
        assert_ne!(a.expose(), argon2id(b"pX", &[1; 16], p).unwrap().expose());
        assert_ne!(a.expose(), argon2id(b"pw", &[2; 16], p).unwrap().expose());
        assert_ne!(a.expose(), argon2id(b"pw", &[1; 16], Argon2Params { t_cost: 2, ..p }).unwrap().expose());
    }

    #[test]
    fn out_of_range_params_rejected_before_allocating() {
        let bad = Argon2Params { m_cost_kib: u32::MAX, t_cost: 3, p_cost: 1 };
        assert!(argon2id(b"pw", &[0; 16], bad).is_err());
        assert!(argon2id(b"pw", &[0; 16], Argon2Params { t_cost: 0, ..Argon2Params::default() }).is_err());
    }

    #[test]
    fn default_meets_design_floor() {
        let d = Argon2Params::default();
        assert!(d.m_cost_kib >= 64 * 1024 && d.t_cost >= 3);
        assert!(d.check_strength().is_ok());
    }

    #[test]
    fn parameters_below_the_owasp_floor_are_refused() {
        let floor = Argon2Params { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 };
        assert!(floor.check_strength().is_ok());
        for weak in [
            Argon2Params { m_cost_kib: 1024, t_cost: 1, p_cost: 1 },
            Argon2Params { m_cost_kib: 19 * 1024 - 1, ..floor },
            Argon2Params { t_cost: 1, ..floor },
        ] {
            let e = weak.check_strength().unwrap_err().to_string();
            assert!(e.contains("below the minimum") && e.contains("--allow-weak-kdf"), "{e}");
            assert!(weak.validate().is_ok(), "still valid to decode and derive (old databases open)");
        }
    }
}
