//! Wire and domain types shared by every part of Nereid.
//!
//! Each resource an operator knows from Triton (package, image, nic tag, network,
//! network pool, NIC, IP) has one module holding its typed record, its field table
//! (the [`spec`] that both validates input and documents the API), and the pure rules
//! that go with it (immutability, unit conversions, quota-versus-image checks).
//! Nothing here does I/O: the headnode's `app` layer calls these functions and the
//! store persists what they return.

pub mod account;
pub mod agent;
pub mod bench;
pub mod damaged;
pub mod error;
pub mod fabric;
pub mod fwrule;
pub mod image;
pub mod ipv4;
pub mod job;
pub mod mac;
pub mod migration;
pub mod netpolicy;
pub mod network;
pub mod nic;
pub mod nic_tag;
pub mod oneachnode;
pub mod package;
pub mod query;
pub mod server;
pub mod spec;
pub mod sysinfo;
pub mod time;
pub mod vm;

pub use error::{ApiError, FieldError};
