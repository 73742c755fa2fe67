//! The one integration-test binary: each module below is a group of tests.

mod support;

mod aggregate;
mod deploy;
mod events;
mod hostile;
mod identity;
mod names;
mod parallel;
mod secrets;
mod storage;
mod storage_large;
mod submit;
mod tools;
mod worker;
mod worker_admin;
mod worker_brownout;
mod worker_failures;
mod worker_lease;
mod worker_memory;
mod worker_missing;
mod worker_outage;
mod worker_races;
mod worker_reads;
mod worker_requests;
mod worker_restart;
mod worker_shutdown;
mod worker_soak;
mod worker_support;
