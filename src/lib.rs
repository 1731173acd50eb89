//! csv-agent: verified training data for data-analysis LLM agents, produced by
//! running real pandas code inside a native Linux jail.
//!
//! Dependency direction: `cli → sandbox`; `sandbox` knows nothing of
//! questions, teachers or LLMs.

pub mod answers;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod datasets;
pub mod eval;
pub mod formats;
pub mod llm;
pub mod logs;
pub mod pipeline;
pub mod profile;
pub mod prompt;
pub mod questions;
pub mod report;
pub mod runner;
pub mod sandbox;
pub mod schema;
pub mod serve;
pub mod shards;
pub mod split;
pub mod store;
pub mod teacher;
