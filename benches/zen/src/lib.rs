//! Benchmarks only: see `benches/rules_vs_zen.rs`.
