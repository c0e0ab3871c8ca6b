//! Frame encode + decode throughput against the raw AEAD (seal + open) at
//! 256 B, 4 KiB and 64 KiB, on both backends.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use driftdb::FileKind;
use driftdb::crypto::aead::{Backend, cipher};
use driftdb::crypto::keys::SecretKey;
use driftdb::format::frame::{FrameKey, decode_frame};
use driftdb::format::header::FileHeader;
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let dek = SecretKey::from_bytes([7; 32]);
    for size in [256usize, 4096, 65536] {
        let mut g = c.benchmark_group(format!("{size}B"));
        g.throughput(Throughput::Bytes(size as u64));
        let payload = vec![0xA5u8; size];
        for backend in [Backend::Ring, Backend::RustCrypto] {
            let fk = FrameKey::derive(&dek, &[1; 16], &FileHeader::new(FileKind::Segment, 1, 2), backend);
            let mut buf = Vec::with_capacity(size + 64);
            g.bench_function(BenchmarkId::new("frame_encode_decode", format!("{backend:?}")), |b| {
                b.iter(|| {
                    buf.clear();
                    fk.encode(3, false, black_box(&payload), &mut buf).unwrap();
                    let raw = decode_frame(&buf).unwrap();
                    black_box(fk.open(3, &raw).unwrap());
                })
            });
            let aead = cipher(backend, &dek);
            let mut ct = Vec::with_capacity(size + 16);
            g.bench_function(BenchmarkId::new("raw_aead_seal_open", format!("{backend:?}")), |b| {
                b.iter(|| {
                    ct.clear();
                    ct.extend_from_slice(black_box(&payload));
                    aead.seal(&[0; 12], b"aad", &mut ct).unwrap();
                    let n = aead.open(&[0; 12], b"aad", &mut ct).unwrap();
                    black_box(n);
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
