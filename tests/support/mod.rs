//! What the root package's end-to-end tests share; each test binary uses part of it.
#![allow(dead_code)]

pub mod proc;
pub mod up;
