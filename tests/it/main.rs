//! The one integration-test binary: each module below is a group of tests.

mod support;

mod aggregate;
mod deploy;
mod storage;
mod storage_large;
mod submit;
mod tools;
