//! How many records each direction's key has protected, and what that asks for: our
//! KeyUpdate, a request for the client's, or a close before a key wears out.
//!
//! Sans IO: the kernel session feeds it counts and KeyUpdates and acts on its answers, so the
//! rules are tested here without a socket.
//!
//! Rules (RFC 8446 §4.6.3; limits per suite, or `ktls_key_limit_records`):
//! - Our TX key is replaced at [`KeyBudget::threshold`] records (a KeyUpdate of ours, then the
//!   kernel's next TX keys).
//! - The client's key is its to replace: at [`KeyBudget::rx_request_threshold`] we send a
//!   KeyUpdate with `update_requested` and follow its answer on RX. The request goes out early
//!   so that what the client already has in flight stays under the hard threshold.
//! - Any KeyUpdate of ours also asks for the client's past half the limit, so symmetric traffic
//!   renews both directions with one exchange.
//! - Where the kernel cannot rekey (before 6.14, or TLS 1.2), either count reaching the
//!   threshold closes the connection; where it can, the close comes only at the hard threshold
//!   (a rekey that failed, or a client that did not answer).

/// Client KeyUpdates accepted in a row without application data between them (the bound of
/// BoringSSL and rustls): each costs a key derivation, a setsockopt and perhaps a KeyUpdate.
pub const MAX_KEY_UPDATES_WITHOUT_DATA: u8 = 32;

/// The client's KeyUpdate flood: more than [`MAX_KEY_UPDATES_WITHOUT_DATA`] in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUpdateFlood;

#[derive(Debug, Clone)]
pub struct KeyBudget {
    /// Records per key before it must be replaced.
    limit: u64,
    /// TLS 1.3 on a kernel that can set keys again on a live socket.
    can_rekey: bool,
    /// Records sent / received (lower bounds between syncs) under the current keys.
    tx_records: u64,
    rx_records: u64,
    /// The client asked for our keys to be updated.
    tx_rekey_due: bool,
    /// Our KeyUpdate asked the client for new keys, and its answer has not come yet.
    rx_update_requested: bool,
    /// Client KeyUpdates since its last application data.
    key_updates_without_data: u8,
}

impl KeyBudget {
    /// Keys that already protected `tx_seq` / `rx_seq` records.
    pub fn new(limit: u64, can_rekey: bool, tx_seq: u64, rx_seq: u64) -> Self {
        Self {
            limit,
            can_rekey,
            tx_records: tx_seq,
            rx_records: rx_seq,
            tx_rekey_due: false,
            rx_update_requested: false,
            key_updates_without_data: 0,
        }
    }

    pub fn sent(&mut self, records: u64) {
        self.tx_records += records;
    }

    /// Application data arrived (it also ends a run of KeyUpdates).
    pub fn received(&mut self, records: u64) {
        self.rx_records += records;
        self.key_updates_without_data = 0;
    }

    /// A record other than application data arrived (a KeyUpdate, an alert): it wears the key
    /// like any other, but does not end a run of KeyUpdates.
    pub fn received_control(&mut self) {
        self.rx_records += 1;
    }

    /// The exact counts, as the kernel keeps them.
    pub fn set_exact(&mut self, tx_records: u64, rx_records: u64) {
        self.tx_records = tx_records;
        self.rx_records = rx_records;
    }

    /// TLS 1.3 on a kernel that can set keys again: KeyUpdates can be followed.
    pub fn can_rekey(&self) -> bool {
        self.can_rekey
    }

    pub fn records(&self) -> (u64, u64) {
        (self.tx_records, self.rx_records)
    }

    /// The point where a key must be replaced (or the connection closed where it cannot be):
    /// the limit minus a margin for what is already queued and the close that follows.
    fn threshold(&self) -> u64 {
        self.limit - self.limit / 16
    }

    /// Where we ask the client for new keys.
    fn rx_request_threshold(&self) -> u64 {
        self.limit - self.limit / 4
    }

    /// Where any KeyUpdate of ours asks for the client's too.
    fn rx_piggyback_threshold(&self) -> u64 {
        self.limit / 2
    }

    /// Past this the connection closes even where it could rekey: a key is never carried over
    /// its limit by a rekey that keeps failing or a client that does not answer.
    fn hard_threshold(&self) -> u64 {
        self.limit - self.limit / 64
    }

    /// Whether a count has reached the point where something happens (a KeyUpdate, a request
    /// for the client's, a close): the counts between syncs are lower bounds, so this is when
    /// an exact count is worth a syscall.
    pub fn at_a_trigger(&self) -> bool {
        let rx_at = if !self.can_rekey {
            self.threshold()
        } else if self.rx_update_requested {
            self.hard_threshold()
        } else {
            self.rx_request_threshold()
        };
        self.tx_records >= self.threshold() || self.rx_records >= rx_at
    }

    /// Close now (1001, `tls_key_limit`).
    pub fn limit_reached(&self) -> bool {
        let past = |records: u64| {
            (records >= self.threshold() && !self.can_rekey) || records >= self.hard_threshold()
        };
        past(self.tx_records) || past(self.rx_records)
    }

    /// Our KeyUpdate should go out now: our count is near the limit, the client asked, or the
    /// client's count is near the limit and it has not been asked yet.
    pub fn tx_rekey_due(&self) -> bool {
        self.can_rekey
            && (self.tx_rekey_due
                || self.tx_records >= self.threshold()
                || self.rx_request_due(self.rx_request_threshold()))
    }

    fn rx_request_due(&self, at: u64) -> bool {
        !self.rx_update_requested && self.rx_records >= at
    }

    /// Whether the KeyUpdate about to go out asks the client for new keys too.
    pub fn ask_with_next_key_update(&self) -> bool {
        self.rx_request_due(self.rx_piggyback_threshold())
    }

    /// Our KeyUpdate went out (`requested`: it asked for the client's) and the kernel has the
    /// new TX keys, which start at `tx_seq`.
    pub fn tx_rekeyed(&mut self, tx_seq: u64, requested: bool) {
        self.tx_records = tx_seq;
        self.tx_rekey_due = false;
        self.rx_update_requested |= requested;
    }

    /// A client KeyUpdate arrived; `Err` past the flood bound (nothing changes then).
    pub fn client_key_update(&mut self) -> Result<(), KeyUpdateFlood> {
        self.key_updates_without_data = self.key_updates_without_data.saturating_add(1);
        if self.key_updates_without_data > MAX_KEY_UPDATES_WITHOUT_DATA {
            return Err(KeyUpdateFlood);
        }
        Ok(())
    }

    /// The kernel follows the client's new keys, which start at `rx_seq`; `requested`: the
    /// client asked for ours in return.
    pub fn rx_rekeyed(&mut self, rx_seq: u64, requested: bool) {
        self.rx_records = rx_seq;
        // Whatever the client said, its keys are new: our request (if any) is met.
        self.rx_update_requested = false;
        self.tx_rekey_due |= requested;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1024;

    /// Sends and receives one record each way per step (an echo), rekeying as told; returns
    /// (our KeyUpdates, those that asked, the client's answers) after `steps`.
    fn echo(b: &mut KeyBudget, steps: u64) -> (u64, u64, u64) {
        let (mut ours, mut asked, mut answers) = (0, 0, 0);
        for _ in 0..steps {
            b.received(1);
            while b.tx_rekey_due() {
                let request = b.ask_with_next_key_update();
                b.tx_rekeyed(0, request);
                ours += 1;
                if request {
                    asked += 1;
                    // The client answers before its next data.
                    b.client_key_update().unwrap();
                    b.rx_rekeyed(0, false);
                    answers += 1;
                }
            }
            assert!(!b.limit_reached(), "{:?}", b.records());
            b.sent(1);
        }
        (ours, asked, answers)
    }

    #[test]
    fn symmetric_traffic_renews_both_keys_with_one_exchange() {
        let mut b = KeyBudget::new(LIMIT, true, 2, 0);
        let (ours, asked, answers) = echo(&mut b, 10 * LIMIT);
        assert_eq!(
            ours, asked,
            "every KeyUpdate of ours also asked for the client's"
        );
        assert_eq!(asked, answers);
        // One exchange every `limit - limit/4` records.
        let period = LIMIT - LIMIT / 4;
        assert_eq!(ours, 10 * LIMIT / period);
    }

    #[test]
    fn send_only_traffic_rekeys_tx_without_asking() {
        let mut b = KeyBudget::new(LIMIT, true, 0, 0);
        let mut ours = 0;
        for _ in 0..5 * LIMIT {
            b.sent(1);
            if b.tx_rekey_due() {
                assert!(!b.ask_with_next_key_update());
                b.tx_rekeyed(0, false);
                ours += 1;
            }
            assert!(!b.limit_reached());
        }
        assert_eq!(ours, 5 * LIMIT / b.threshold());
    }

    #[test]
    fn receive_only_traffic_asks_the_client_and_waits_for_its_answer() {
        let mut b = KeyBudget::new(LIMIT, true, 0, 0);
        b.received(LIMIT - LIMIT / 4);
        assert!(b.tx_rekey_due());
        assert!(b.ask_with_next_key_update());
        b.tx_rekeyed(1, true);
        assert!(!b.tx_rekey_due(), "asked once, not again per pass");
        // The client's data in flight before our request reached it still counts...
        b.received(b.hard_threshold() - b.records().1 - 1);
        assert!(!b.limit_reached());
        assert!(
            b.records().1 - (LIMIT - LIMIT / 4) > LIMIT / 5,
            "room for data in flight"
        );
        // ...and one that never answers is closed before its key wears out.
        b.received(1);
        assert!(b.limit_reached());
        assert!(b.records().1 < LIMIT);
    }

    #[test]
    fn a_requested_client_key_update_is_answered_once() {
        let mut b = KeyBudget::new(LIMIT, true, 5, 5);
        b.client_key_update().unwrap();
        b.rx_rekeyed(0, true);
        assert!(b.tx_rekey_due());
        assert!(!b.ask_with_next_key_update());
        b.tx_rekeyed(0, false);
        assert!(!b.tx_rekey_due());
        // Not requested: followed, nothing owed.
        b.client_key_update().unwrap();
        b.rx_rekeyed(0, false);
        assert!(!b.tx_rekey_due());
    }

    #[test]
    fn without_kernel_rekey_either_direction_closes_at_the_threshold() {
        for (tx, rx) in [(1, 0), (0, 1)] {
            let mut b = KeyBudget::new(LIMIT, false, 0, 0);
            b.sent(tx * (b.threshold() - 1));
            b.received(rx * (b.threshold() - 1));
            assert!(!b.limit_reached() && !b.tx_rekey_due());
            b.sent(tx);
            b.received(rx);
            assert!(b.limit_reached());
            assert!(
                !b.tx_rekey_due(),
                "nothing to send where keys cannot change"
            );
        }
    }

    #[test]
    fn a_failing_rekey_still_closes_before_the_limit() {
        let mut b = KeyBudget::new(LIMIT, true, 0, 0);
        b.sent(b.threshold());
        assert!(b.tx_rekey_due() && !b.limit_reached());
        b.sent(LIMIT / 16 - LIMIT / 64);
        assert!(b.limit_reached());
    }

    #[test]
    fn a_key_update_flood_is_refused_and_data_resets_the_run() {
        let mut b = KeyBudget::new(LIMIT, true, 0, 0);
        for _ in 0..MAX_KEY_UPDATES_WITHOUT_DATA {
            b.client_key_update().unwrap();
            b.rx_rekeyed(0, true);
        }
        b.received(1);
        for _ in 0..MAX_KEY_UPDATES_WITHOUT_DATA {
            b.client_key_update().unwrap();
        }
        assert_eq!(b.client_key_update(), Err(KeyUpdateFlood));
    }
}
