//! Tests of the control room through real sockets in temporary directories.

mod cli;
mod mock;
mod protocol;
mod server;
