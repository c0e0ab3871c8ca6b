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
        // Offset the source from the page start, so that copies into the
        // output buffer do not hit 4 KiB store-to-load aliasing (an artifact
        // of where two large allocations happen to land, which otherwise
        // swings the figures by up to 3x).
        let backing = vec![0xA5u8; size + 4096];
        let payload = &backing[2048 + 7..2048 + 7 + size];
        for backend in [Backend::Ring, Backend::RustCrypto] {
            let fk = FrameKey::derive(&dek, &[1; 16], &FileHeader::new(FileKind::Segment, 1, 2), backend);
            let mut buf = Vec::with_capacity(size + 64);
            let mut plain = Vec::with_capacity(size + 64);
            g.bench_function(BenchmarkId::new("frame_encode_decode", format!("{backend:?}")), |b| {
                b.iter(|| {
                    buf.clear();
                    fk.encode(3, false, black_box(payload), &mut buf).unwrap();
                    let raw = decode_frame(&buf).unwrap();
                    fk.open_into(3, &raw, &mut plain).unwrap();
                    black_box(&plain);
                })
            });
            if backend == Backend::Ring {
                let mut enc = Vec::new();
                fk.encode(3, false, payload, &mut enc).unwrap();
                g.bench_function("frame_encode_only", |b| {
                    b.iter(|| {
                        buf.clear();
                        fk.encode(3, false, black_box(payload), &mut buf).unwrap();
                    })
                });
                g.bench_function("frame_decode_only", |b| {
                    b.iter(|| {
                        let raw = decode_frame(black_box(&enc)).unwrap();
                        fk.open_into(3, &raw, &mut plain).unwrap();
                        black_box(&plain);
                    })
                });
                g.bench_function("crc32_only", |b| b.iter(|| black_box(crc32fast::hash(black_box(payload)))));
            }
            let aead = cipher(backend, &dek);
            let mut ct = Vec::with_capacity(size + 16);
            g.bench_function(BenchmarkId::new("raw_aead_seal_open", format!("{backend:?}")), |b| {
                b.iter(|| {
                    ct.clear();
                    ct.extend_from_slice(black_box(payload));
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
