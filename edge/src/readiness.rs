//! Read-readiness waits that outlive the loop pass that armed them.
//!
//! monoio's `readable()` submits an io_uring PollAdd when first polled and an AsyncCancel when
//! dropped unfinished. A loop that builds its read wait afresh each pass therefore pays two ring
//! submissions and two completions, every pass that ends on another wake: a pub/sub subscriber
//! woken once per publication re-armed and cancelled its read poll once per delivery, on a
//! socket that never became readable, and a proxied session paid the same for whichever side
//! stayed quiet. An [`ArmedPoll`] leaves its PollAdd in the ring until it fires, so such a pass
//! costs the ring nothing.
//!
//! A poll that fired while nobody was waiting on it is reported the next time it is awaited; a
//! read then takes what is there (or finds nothing, one wasted `recv`, if another path read it
//! first). Write readiness is not kept this way: the kernel reports a TCP socket writable only
//! once a good part of its send buffer is free, and a report kept from earlier would let the
//! loop write into whatever little room an ACK just opened — small writes and small records
//! under backpressure, the one time the write wait is armed at all.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use monoio::net::TcpStream;

type PollFuture = Pin<Box<dyn Future<Output = std::io::Result<()>>>>;

/// One socket's read-readiness wait, kept in the ring across loop passes until it fires.
pub(crate) struct ArmedPoll {
    stream: Rc<TcpStream>,
    /// The submitted poll while no [`Ready`] holds it: in the ring, or fired and not yet
    /// reported.
    parked: Cell<Option<PollFuture>>,
}

impl std::fmt::Debug for ArmedPoll {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmedPoll").finish_non_exhaustive()
    }
}

impl ArmedPoll {
    pub(crate) fn readable(stream: Rc<TcpStream>) -> Self {
        Self {
            stream,
            parked: Cell::new(None),
        }
    }

    /// Resolves when the socket is readable (consumes nothing). Dropping the future before then
    /// parks the poll, still armed, for the next call. Nothing is submitted until it is polled.
    pub(crate) fn ready(&self) -> Ready<'_> {
        Ready {
            poll: self,
            current: None,
        }
    }

    fn submit(&self) -> PollFuture {
        let stream = self.stream.clone();
        Box::pin(async move { stream.readable(false).await })
    }

    /// Whether a poll is parked (armed in the ring, or fired and not yet reported).
    #[cfg(test)]
    fn is_parked(&self) -> bool {
        let parked = self.parked.take();
        let is = parked.is_some();
        self.parked.set(parked);
        is
    }
}

/// One wait on an [`ArmedPoll`]; see [`ArmedPoll::ready`].
pub(crate) struct Ready<'a> {
    poll: &'a ArmedPoll,
    current: Option<PollFuture>,
}

impl Future for Ready<'_> {
    type Output = std::io::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let poll = this.poll;
        let current = this
            .current
            .get_or_insert_with(|| poll.parked.take().unwrap_or_else(|| poll.submit()));
        let result = std::task::ready!(current.as_mut().poll(cx));
        // Reported: the next wait submits a fresh poll.
        this.current = None;
        Poll::Ready(result)
    }
}

impl Drop for Ready<'_> {
    fn drop(&mut self) {
        if let Some(unfinished) = self.current.take() {
            self.poll.parked.set(Some(unfinished));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::task::Waker;

    use super::*;

    fn poll_once<F: Future>(fut: Pin<&mut F>) -> Poll<F::Output> {
        fut.poll(&mut Context::from_waker(Waker::noop()))
    }

    fn runtime() -> monoio::Runtime<monoio::IoUringDriver> {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .build()
            .expect("io_uring runtime")
    }

    fn pair() -> (std::net::TcpStream, Rc<TcpStream>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, Rc::new(TcpStream::from_std(server).unwrap()))
    }

    /// A wait dropped before it fired stays armed, and reports readiness that came meanwhile.
    #[test]
    fn a_dropped_wait_stays_armed_and_reports_later_readiness() {
        runtime().block_on(async {
            let (mut client, stream) = pair();
            let poll = ArmedPoll::readable(stream);
            assert!(
                !poll.is_parked(),
                "nothing is submitted before the first wait"
            );
            {
                let wait = std::pin::pin!(poll.ready());
                assert!(poll_once(wait).is_pending(), "nothing sent yet");
            }
            assert!(poll.is_parked(), "dropping the wait parks the poll");
            client.write_all(b"x").unwrap();
            poll.ready().await.expect("readable");
            assert!(!poll.is_parked(), "a reported poll is consumed");
        });
    }

    /// A wait that is never polled submits nothing and parks nothing.
    #[test]
    fn an_unpolled_wait_costs_nothing() {
        runtime().block_on(async {
            let (mut client, stream) = pair();
            let poll = ArmedPoll::readable(stream);
            drop(poll.ready());
            assert!(!poll.is_parked());
            client.write_all(b"x").unwrap();
            poll.ready().await.expect("readable");
        });
    }
}
