//! Shared test helpers: the Azurite harness, unique names, a fault-injecting TCP proxy, and
//! a `rollq` command builder pointed at an emulator.
#![allow(dead_code)] // Not every test module uses every helper.

pub mod azurite;
pub mod proxy;

pub use azurite::{Azurite, unique_name};
pub use proxy::TcpProxy;
