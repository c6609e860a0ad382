//! Nereid's CNS: Triton's instance DNS (compat §5) as a library.
//!
//! The headnode fills a [`Config`], the [`Account`]s and the [`Instance`]s, builds the zones
//! with [`build`] (pure), publishes them with [`publish`] (serials and IXFR diffs kept by
//! [`ZoneSet`]) and runs [`serve`] on its DNS sockets; [`dns_names`] gives CloudAPI's
//! `dns_names` of one instance, [`suffixes`] the resolver search suffixes of its networks.
//!
//! * [`model`]: the input and output types.
//! * [`names`]: the naming and inclusion rules, pure.
//! * [`zone`]: serials, diffs, lookups in the published zones.
//! * [`wire`]: conversions to `hickory-proto`'s records; SOA and NS.
//! * [`answer`]: one request in, replies out, pure.
//! * [`notify`]: NOTIFY to secondaries.
//! * [`server`]: the UDP/TCP listeners.

pub mod answer;
pub mod model;
pub mod names;
pub mod notify;
pub mod server;
pub mod wire;
pub mod zone;

pub use model::{Account, Config, Data, Instance, Nic, Record, Zones};
pub use names::{build, dns_names, suffixes};
pub use server::{channel, publish, serve};
pub use zone::ZoneSet;
