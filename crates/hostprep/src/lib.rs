//! The host packages and tools the lab needs: which commands, from which Debian packages
//! ([`tools`]), and installing the missing ones with apt as one agreeing set that removes
//! and downgrades nothing ([`apt`]). Used by xtask; a library so its planning and
//! parsers have tests and docs of their own.

pub mod apt;
pub mod tools;
