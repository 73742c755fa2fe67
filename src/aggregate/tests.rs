//! Reducer tests (unit and property); see also tests/it/aggregate.rs for the CLI and pandas fixtures.
