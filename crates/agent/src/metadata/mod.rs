//! The SmartOS metadata protocol (v2, with v1 for old clients), served to each guest on
//! its second serial port, so that cloud-init's SmartOS data source, `mdata-get`/`mdata-put`
//! and Triton's guest scripts work unchanged.
//!
//! # The protocol in brief
//!
//! ```text
//!   guest                                   agent
//!   \n                                 ──►  invalid command
//!   NEGOTIATE V2                       ──►  V2_OK
//!   V2 33 <crc> dc4fae17 GET <b64 key> ──►  V2 21 265ae1d8 dc4fae17 SUCCESS W10=   (value "[]")
//!   V2 … <reqid> KEYS                  ──►  SUCCESS + keys joined by \n
//!   V2 … <reqid> PUT <b64(b64 key + " " + b64 value)>  ──►  SUCCESS | FAILURE + reason
//!   V2 … <reqid> DELETE <b64 key>      ──►  SUCCESS | FAILURE + reason
//!   GET <key> / KEYS                   ──►  v1: SUCCESS\n<value>\n.\n | NOTFOUND | FAILURE
//! ```
//!
//! A V2 line is `V2 <len> <crc32> <reqid> <CODE>[ <base64>]`; len and CRC-32 cover the body
//! after the CRC. [`codec`] reads and writes lines (and decides which lines get no answer at
//! all: firmware prints its console to this port too); [`lines`] splits the stream with a
//! bound on line length.
//!
//! # Routing
//!
//! [`keys`] applies SmartOS's namespaces to a [`VmView`] re-read on every request:
//! `sdc:*` are read-only facts about the VM (`sdc:uuid`, `sdc:nics`, `sdc:routes`,
//! `sdc:tags.<name>`, …); `*_pw` keys and keys in one of the VM's
//! `internal_metadata_namespaces` (`<ns>:…`) come from `internal_metadata`, the latter
//! read-only; everything else is `customer_metadata`. A guest's PUT or DELETE becomes a
//! [`MetadataWrite`] (`set_*`/`remove_*`), refused for `sdc:` and internal namespaces.
//!
//! # Attaching to QEMU
//!
//! QEMU runs with `-chardev socket,id=md,path=<vm dir>/metadata.sock,server=on,wait=off`
//! as the second serial port. [`spawn`] starts one task per VM that connects to that socket
//! as a client (retrying every 100 ms until it exists), serves the guest, and reconnects
//! whenever the connection drops, until the VM's [`Source`] says it is gone. See [`server`].

pub mod codec;
pub mod keys;
pub mod lines;
pub mod server;

pub use keys::{Lookup, MetadataWrite, VmView};
pub use server::{Source, spawn};
