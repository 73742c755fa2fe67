//! rollq: queue-driven CSV time-series roll-ups on Azure Storage.
//!
//! A producer uploads a CSV blob and enqueues a message naming it; each worker replica leases
//! messages, streams the blob through a single-pass reducer (per bucket and value column:
//! count, mean, sample std, min, max, with pandas `resample` semantics) and writes
//! `<name>_aggregated.csv` back before it deletes the message.
//!
//! # Layout
//! - [`aggregate`]: the streaming reducer (sync, no IO beyond `Read`/`Write`) and its CSV parser;
//!   `reduce/` holds one pass: header, rows, the fast lane, the streaming and holding states.
//! - [`storage`]: the queue and blob traits, [`storage::Op`] (the operation vocabulary), the
//!   error kinds, connection settings (`connection/`), the Azure SDK adapter (`azure/`, which
//!   alone imports the SDK and owns `connect`), and an in-memory fake compiled only for tests.
//! - [`cli`]: one module per subcommand; `main.rs` only parses and dispatches.
//! - [`contract`]: the output contract: output names, input/output rules, metadata, currency.
//! - [`telemetry`]: tracing subscriber set-up.
//! - `fuzzing` (hidden): the properties the fuzz targets in `fuzz/` check, and their seeds.
//! - [`worker`]: the queue worker: `process_one` (the recipe) in `mod.rs`; `settings`, `check`
//!   (start-up), `receive_loop`, `pipeline` (one job), `outcome`, `lease`, `envelope`
//!   (bookkeeping and poison copies), `backoff` (the platform-failure delay), `job` (message
//!   forms), `error` (the one classifier), `io` (blocking bridges).
//! - [`startup`]: `App::build` / `run_until_stopped`: wires storage, worker, admin server.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics` and the readiness state.
//! - [`metrics`]: the Prometheus metrics (names are a contract with dashboards).
//! - [`shutdown`]: the two-stage SIGTERM/SIGINT handling.
#![forbid(unsafe_code)]
#![warn(rust_2018_idioms)]

pub mod aggregate;
pub mod cli;
pub mod contract;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod shutdown;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod worker;
