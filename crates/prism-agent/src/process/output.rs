//! Output fan-out of one process: attached subscribers get every event through bounded
//! channels (a slow subscriber slows the reader, which fills the pipe, which blocks the
//! process); with nobody attached, output goes to a bounded backlog and the excess is dropped.

use std::collections::VecDeque;
use std::sync::Mutex;

use prism_proto::process::{DataEvent, EndEvent, ProcessEvent};
use tokio::sync::mpsc;

/// Bytes of unattended output kept for the next subscriber.
pub const BACKLOG_BYTES: usize = 64 * 1024;
/// Events queued per subscriber before the reader waits.
const SUBSCRIBER_QUEUE: usize = 16;

#[derive(Default)]
struct State {
    subs: Vec<mpsc::Sender<ProcessEvent>>,
    backlog: VecDeque<DataEvent>,
    backlog_bytes: usize,
    dropped: u64,
    ended: bool,
}

/// The fan-out point.
#[derive(Default)]
pub struct Output {
    state: Mutex<State>,
}

/// A new subscriber: the backlog to send first, then the live channel.
pub struct Subscription {
    pub backlog: Vec<ProcessEvent>,
    pub rx: mpsc::Receiver<ProcessEvent>,
}

impl Output {
    /// Attaches a subscriber, unless the process already ended.
    pub fn subscribe(&self) -> Option<Subscription> {
        let mut st = self.state.lock().ok()?;
        if st.ended {
            return None;
        }
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        st.subs.push(tx);
        st.backlog_bytes = 0;
        let backlog = st.backlog.drain(..).map(ProcessEvent::Data).collect();
        Some(Subscription { backlog, rx })
    }

    /// Delivers a data event to every subscriber (waiting for room), or keeps it in the backlog.
    pub async fn deliver(&self, ev: DataEvent) {
        let subs = match self.state.lock() {
            Ok(st) => st.subs.clone(),
            Err(_) => return,
        };
        let mut delivered = false;
        let mut dead = Vec::new();
        for s in &subs {
            if s.send(ProcessEvent::Data(ev.clone())).await.is_ok() {
                delivered = true;
            } else {
                dead.push(s.clone());
            }
        }
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if !dead.is_empty() {
            st.subs.retain(|s| !dead.iter().any(|d| d.same_channel(s)));
        }
        if !delivered {
            push_backlog(&mut st, ev);
        }
    }

    /// Sends the end event to every subscriber and closes their streams.
    pub async fn end(&self, end: EndEvent) {
        let subs = match self.state.lock() {
            Ok(mut st) => {
                st.ended = true;
                if st.dropped > 0 {
                    tracing::debug!(dropped = st.dropped, "unattended output was dropped");
                }
                std::mem::take(&mut st.subs)
            }
            Err(_) => return,
        };
        for s in subs {
            let _ = s.send(ProcessEvent::End(end.clone())).await;
        }
    }
}

fn push_backlog(st: &mut State, ev: DataEvent) {
    // A copy, so that unattended output never pins the reader's pooled buffers.
    let ev = rewrap(&ev, bytes::Bytes::copy_from_slice(ev.bytes()));
    let len = ev.bytes().len();
    if len >= BACKLOG_BYTES {
        st.dropped += (st.backlog_bytes + len - BACKLOG_BYTES) as u64;
        st.backlog.clear();
        let b = ev.bytes().slice(len - BACKLOG_BYTES..);
        st.backlog.push_back(rewrap(&ev, b));
        st.backlog_bytes = BACKLOG_BYTES;
        return;
    }
    st.backlog.push_back(ev);
    st.backlog_bytes += len;
    while st.backlog_bytes > BACKLOG_BYTES {
        let Some(front) = st.backlog.pop_front() else {
            break;
        };
        let excess = st.backlog_bytes - BACKLOG_BYTES;
        let flen = front.bytes().len();
        if flen > excess {
            st.backlog
                .push_front(rewrap(&front, front.bytes().slice(excess..)));
            st.backlog_bytes -= excess;
            st.dropped += excess as u64;
        } else {
            st.backlog_bytes -= flen;
            st.dropped += flen as u64;
        }
    }
}

fn rewrap(ev: &DataEvent, b: bytes::Bytes) -> DataEvent {
    match ev {
        DataEvent::Stdout(_) => DataEvent::Stdout(b),
        DataEvent::Stderr(_) => DataEvent::Stderr(b),
        DataEvent::Pty(_) => DataEvent::Pty(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test(flavor = "current_thread")]
    async fn backlog_is_bounded_and_replayed_once() {
        let out = Output::default();
        for i in 0..100u8 {
            out.deliver(DataEvent::Stdout(Bytes::from(vec![i; 1024])))
                .await;
        }
        let sub = out.subscribe();
        let backlog = sub.map(|s| s.backlog).unwrap_or_default();
        let total: usize = backlog
            .iter()
            .map(|e| match e {
                ProcessEvent::Data(d) => d.bytes().len(),
                _ => 0,
            })
            .sum();
        assert_eq!(total, BACKLOG_BYTES);
        // The newest output is kept.
        assert!(
            matches!(backlog.last(), Some(ProcessEvent::Data(DataEvent::Stdout(b))) if b[0] == 99)
        );
        let again = out.subscribe().map(|s| s.backlog.len());
        assert_eq!(again, Some(0));
    }
}
