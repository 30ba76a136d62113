//! The map layouts shared with the kernel side (`ebpf/include/edge_maps.h`): they live in
//! `wssedge-sys` with their `aya::Pod` impls.

pub use wssedge_sys::bpf_maps::*;
