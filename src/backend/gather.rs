//! The replies of a split command's parts, collected in one place.
//!
//! A split command (MSET, MGET, DEL over keys of several servers) sends one part per server.
//! Each part could have a one-shot channel of its own, each woken and polled on its own; a
//! [`Gather`] instead takes every part's reply into one shared list, and wakes the session once,
//! when the last one is in.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use super::Reply;

/// Replies of a split command's parts, by part index.
#[derive(Debug)]
pub struct Gather {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Each part's reply once it is in; `None` for a part whose connection ended first.
    replies: Vec<Option<Reply>>,
    /// Parts still to come.
    remaining: usize,
    /// The session waiting for them.
    waker: Option<Waker>,
}

impl Gather {
    /// A gather for `parts` parts; hand each out with [`Gather::part`], once per index.
    pub fn new(parts: usize) -> Arc<Gather> {
        Arc::new(Gather {
            state: Mutex::new(State {
                replies: (0..parts).map(|_| None).collect(),
                remaining: parts,
                waker: None,
            }),
        })
    }

    /// The slot of part `index`.
    pub fn part(self: &Arc<Self>, index: usize) -> GatherPart {
        GatherPart {
            gather: Some(self.clone()),
            index,
        }
    }

    /// Every part's reply once all are in (each `None` whose connection ended before it
    /// replied); taken, so ready once.
    pub fn poll_replies(&self, cx: &mut Context<'_>) -> Poll<Vec<Option<Reply>>> {
        let mut state = self.lock();
        if state.remaining == 0 {
            return Poll::Ready(std::mem::take(&mut state.replies));
        }
        match &state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The state, locked. Nothing under the lock can panic halfway, so a poisoned lock is used
    /// as it is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, index: usize, reply: Option<Reply>) {
        let waker = {
            let mut state = self.lock();
            if let Some(slot) = state.replies.get_mut(index) {
                *slot = reply;
            }
            state.remaining = state.remaining.saturating_sub(1);
            if state.remaining == 0 {
                state.waker.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Where one part's reply goes. Dropped without a reply (its connection task gone), it counts
/// as in, with no reply, so that the command still completes.
#[derive(Debug)]
pub struct GatherPart {
    gather: Option<Arc<Gather>>,
    index: usize,
}

impl GatherPart {
    /// Hands in the part's reply.
    pub fn complete(mut self, reply: Reply) {
        if let Some(gather) = self.gather.take() {
            gather.set(self.index, Some(reply));
        }
    }
}

impl Drop for GatherPart {
    fn drop(&mut self) {
        if let Some(gather) = self.gather.take() {
            gather.set(self.index, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn wakes_once_when_the_last_part_is_in_and_keeps_part_order() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let gather = Gather::new(3);
        let parts: Vec<GatherPart> = (0..3).map(|i| gather.part(i)).collect();
        assert!(gather.poll_replies(&mut cx).is_pending());
        let mut parts = parts.into_iter();
        let (a, b, c) = (parts.next(), parts.next(), parts.next());
        if let Some(c) = c {
            c.complete(Ok(Bytes::from_static(b"+c\r\n")));
        }
        // A part whose connection went away without replying.
        drop(b);
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        assert!(gather.poll_replies(&mut cx).is_pending());
        if let Some(a) = a {
            a.complete(Ok(Bytes::from_static(b"+a\r\n")));
        }
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        let Poll::Ready(replies) = gather.poll_replies(&mut cx) else {
            panic!("not ready after every part");
        };
        let frames: Vec<Option<Bytes>> = replies
            .into_iter()
            .map(|r| r.and_then(Result::ok))
            .collect();
        assert_eq!(
            frames,
            vec![
                Some(Bytes::from_static(b"+a\r\n")),
                None,
                Some(Bytes::from_static(b"+c\r\n"))
            ]
        );
    }
}
