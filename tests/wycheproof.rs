//! Wycheproof AES-GCM vectors (tests/data/wycheproof, Apache-2.0) on both
//! AEAD backends: every valid case encrypts to the expected bytes and
//! decrypts; every invalid case fails to decrypt and leaves no plaintext.

use driftdb::crypto::aead::{Backend, TAG_LEN, cipher};
use driftdb::crypto::keys::SecretKey;

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn aes_256_gcm_vectors_pass_on_both_backends() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wycheproof/aes_gcm_test.json"))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (mut valid, mut invalid) = (0, 0);
    for g in doc["testGroups"].as_array().unwrap() {
        // DriftDB uses AES-256 with 96-bit nonces and 128-bit tags only.
        if g["keySize"] != 256 || g["ivSize"] != 96 || g["tagSize"] != 128 {
            continue;
        }
        for t in g["tests"].as_array().unwrap() {
            let id = &t["tcId"];
            let key = SecretKey::from_slice(&unhex(t["key"].as_str().unwrap())).unwrap();
            let iv: [u8; 12] = unhex(t["iv"].as_str().unwrap()).try_into().unwrap();
            let aad = unhex(t["aad"].as_str().unwrap());
            let msg = unhex(t["msg"].as_str().unwrap());
            let mut ct = unhex(t["ct"].as_str().unwrap());
            ct.extend(unhex(t["tag"].as_str().unwrap()));
            let is_valid = t["result"] == "valid";
            for backend in [Backend::Ring, Backend::RustCrypto] {
                let c = cipher(backend, &key);
                let mut buf = ct.clone();
                match c.open(&iv, &aad, &mut buf) {
                    Ok(n) => {
                        assert!(is_valid, "tc {id} on {backend:?}: invalid vector decrypted");
                        assert_eq!(&buf[..n], &msg[..], "tc {id} on {backend:?}");
                    }
                    Err(_) => {
                        assert!(!is_valid, "tc {id} on {backend:?}: valid vector rejected");
                        assert!(buf.iter().all(|&b| b == 0), "tc {id} on {backend:?}: buffer not wiped");
                    }
                }
                if is_valid {
                    let mut out = msg.clone();
                    c.seal(&iv, &aad, &mut out).unwrap();
                    assert_eq!(out, ct, "tc {id} on {backend:?}: encryption differs");
                    assert_eq!(out.len(), msg.len() + TAG_LEN);
                }
            }
            if is_valid { valid += 1 } else { invalid += 1 }
        }
    }
    assert!(valid == 39 && invalid == 27, "ran {valid} valid and {invalid} invalid vectors");
}
