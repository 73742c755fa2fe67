//! Shared test helpers: the Azurite harness, unique names, a fault-injecting TCP proxy, and
//! a `rollq` command builder pointed at an emulator.
#![allow(dead_code)] // Not every test module uses every helper.

pub mod azurite;
pub mod fake_http;
pub mod proxy;

pub use azurite::{Azurite, unique_name};
pub use fake_http::FakeHttp;
pub use proxy::TcpProxy;

/// Owns a spawned child process: killed and reaped on drop, even if the test panics.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
