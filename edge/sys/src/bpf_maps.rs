//! Rust mirrors of `ebpf/include/edge_maps.h` (the kernel side's map layouts), and their
//! `aya::Pod` impls: aya copies these structs to and from the kernel's maps as raw bytes. Change
//! both together; `layouts_match_the_header` checks the sizes.

/// `EDGE_UNLIMITED`: a limit value meaning "no limit".
pub const UNLIMITED: u32 = u32::MAX;
/// `EDGE_MAX_LISTENERS`: size of the listener sockarray and the active table.
pub const MAX_LISTENERS: usize = 256;

/// `struct edge_config`: the `config` ARRAY's only entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeConfig {
    pub default_limit: u32,
    pub enabled: u32,
    pub active_count: u32,
    pub sweep_epoch: u32,
}

/// `struct edge_ip_stats`: the `ip_stats` LRU_HASH value, keyed by the 16-byte address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeIpStats {
    pub current: u32,
    pub _pad: u32,
    pub accepted: u64,
    pub refused: u64,
}

/// `struct edge_flow`: the `pending` HASH key (the SYN's 4-tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgeFlow {
    pub raddr: [u8; 16],
    pub laddr: [u8; 16],
    /// Network byte order.
    pub rport: u16,
    /// Host byte order.
    pub lport: u16,
    pub _pad: u32,
}

/// `struct edge_pending`: a slot reserved at the SYN, not yet owned by a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EdgePending {
    pub created_ns: u64,
    pub created_epoch: u32,
    pub seen_epoch: u32,
    pub has_req: u32,
    pub _pad: u32,
}

// SAFETY: plain #[repr(C)] integer structs with explicit padding fields: every bit pattern is
// valid and there are no implicit padding bytes.
unsafe impl aya::Pod for EdgeConfig {}
// SAFETY: as above.
unsafe impl aya::Pod for EdgeIpStats {}
// SAFETY: as above.
unsafe impl aya::Pod for EdgeFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for EdgePending {}

/// `enum edge_counter`: indices into the `counters` PERCPU_ARRAY.
pub mod counter {
    pub const SYNS_SEEN: u32 = 0;
    pub const REFUSED_LIMIT: u32 = 1;
    pub const REFUSED_BLOCKED: u32 = 2;
    pub const ACCEPTED: u32 = 3;
    pub const RELEASED: u32 = 4;
    pub const RETRANSMIT: u32 = 5;
    pub const NO_LISTENER: u32 = 6;
    pub const UNRESERVED: u32 = 7;
    pub const TABLE_FULL: u32 = 8;
    pub const COUNT: u32 = 9;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_header() {
        let h = include_str!("../../../ebpf/include/edge_maps.h");
        assert_eq!(std::mem::size_of::<EdgeConfig>(), 16);
        assert_eq!(std::mem::size_of::<EdgeIpStats>(), 24);
        assert_eq!(std::mem::size_of::<EdgeFlow>(), 40);
        assert_eq!(std::mem::size_of::<EdgePending>(), 24);
        assert!(h.contains("#define EDGE_UNLIMITED 0xffffffffu"));
        assert!(h.contains(&format!("#define EDGE_MAX_LISTENERS {MAX_LISTENERS}")));
        assert!(h.contains(&format!("EDGE_C_COUNT = {},", counter::COUNT)));
        assert!(h.contains(&format!("EDGE_C_TABLE_FULL = {},", counter::TABLE_FULL)));
    }

    /// What `Pod` promises aya: no implicit padding (the size is the sum of the fields), so
    /// every byte aya copies is a field's, and any bit pattern read back is a valid value.
    #[test]
    fn pod_layouts_have_no_implicit_padding() {
        use std::mem::{align_of, size_of};
        assert_eq!(size_of::<EdgeConfig>(), 4 * 4);
        assert_eq!(size_of::<EdgeIpStats>(), 4 + 4 + 8 + 8);
        assert_eq!(size_of::<EdgeFlow>(), 16 + 16 + 2 + 2 + 4);
        assert_eq!(size_of::<EdgePending>(), 8 + 4 + 4 + 4 + 4);
        assert_eq!(align_of::<EdgeIpStats>(), 8);
        assert_eq!(align_of::<EdgePending>(), 8);
        fn from_bytes<T: aya::Pod + Default>(fill: u8) -> T {
            let mut v = T::default();
            // SAFETY: `T: Pod` (plain integers, no padding): any byte pattern is a valid `T`,
            // and `v` is a live, exclusively borrowed value of exactly size_of::<T>() bytes.
            unsafe { std::ptr::write_bytes(&mut v as *mut T, fill, 1) };
            v
        }
        assert_eq!(from_bytes::<EdgeConfig>(0xff).default_limit, UNLIMITED);
        assert_eq!(
            from_bytes::<EdgeIpStats>(0x01).accepted,
            0x0101_0101_0101_0101
        );
        assert_eq!(from_bytes::<EdgeFlow>(0x02).rport, 0x0202);
        assert_eq!(from_bytes::<EdgePending>(0x03).seen_epoch, 0x0303_0303);
    }
}
