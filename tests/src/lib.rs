//! Lab harness for end-to-end tests.
