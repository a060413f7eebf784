//! Micro-benchmarks of the storage write path and the codecs on the hot path, so regressions show
//! up: `cargo bench --bench write_path`.
//!
//! The log benchmarks sync (the default, durable configuration): they measure the cost of one
//! Ready's write (one WAL record and one `fdatasync`) for a given batch size.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pontoon::node::{EntryKind, ProposalContext};
use pontoon::raft::eraftpb::Entry;
use pontoon::storage::{LmdbStorage, LogStore, PersistBatch, SnapshotEnvelope};
use protobuf::Message as _;

fn entry(index: u64, size: usize) -> Entry {
    let mut e = Entry {
        index,
        term: 1,
        ..Default::default()
    };
    e.set_data(vec![7u8; size].into());
    e
}

fn log_persist(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LmdbStorage::open(dir.path(), 1, "bench", 1 << 30).expect("open");
    let mut next = 1u64;
    let mut group = c.benchmark_group("log_persist");
    group.sample_size(30);
    for batch in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(
            BenchmarkId::new("entries_16B", batch),
            &batch,
            |b, &batch| {
                b.iter_batched(
                    || {
                        let entries: Vec<Entry> =
                            (0..batch as u64).map(|i| entry(next + i, 16)).collect();
                        next += batch as u64;
                        PersistBatch {
                            entries,
                            ..Default::default()
                        }
                    },
                    |batch| store.persist(batch).expect("persist"),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

fn codecs(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let e = entry(42, 256);
    group.bench_function("entry_encode_256B", |b| {
        b.iter(|| e.write_to_bytes().expect("encode"))
    });
    let bytes = e.write_to_bytes().expect("encode");
    group.bench_function("entry_decode_256B", |b| {
        b.iter(|| Entry::parse_from_bytes(&bytes).expect("decode"))
    });
    let ctx = ProposalContext {
        kind: EntryKind::User,
        node_id: 1,
        nonce: 7,
        seq: 99,
    };
    group.bench_function("proposal_context_round_trip", |b| {
        b.iter(|| ProposalContext::decode(&ctx.encode()))
    });
    let envelope = SnapshotEnvelope {
        user_data: vec![1u8; 1 << 20],
        ..Default::default()
    };
    let encoded = envelope.encode().expect("encode");
    group.throughput(Throughput::Bytes(encoded.len() as u64));
    group.bench_function("snapshot_envelope_encode_1MiB", |b| {
        b.iter(|| envelope.encode().expect("encode"))
    });
    group.bench_function("snapshot_envelope_decode_1MiB", |b| {
        b.iter(|| SnapshotEnvelope::decode(&encoded).expect("decode"))
    });
    group.finish();
}

criterion_group!(benches, log_persist, codecs);
criterion_main!(benches);
