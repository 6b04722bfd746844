//! The audit trail's writer. A request's record is queued (no wait on the request's path) and a
//! thread of its own appends what is queued in one transaction per batch. Reads of the trail
//! ([`AuditLog::flush`] first) see every record queued before them, so a client that reads the
//! trail after a response always finds that request; the daemon flushes at shutdown. A kill -9
//! loses only the records still queued (those of the last moments, not yet in the database).

use std::sync::Arc;
use std::sync::mpsc;

use prism_store::SqliteStore;
use prism_store::auth::AuditRecord;

/// Most records written in one transaction.
const MAX_BATCH: usize = 256;

enum Msg {
    Record(AuditRecord),
    /// Answered once everything queued before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The queue in front of the audit table. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct AuditLog {
    store: Arc<SqliteStore>,
    /// `None` when the writer thread could not start: records are then written inline.
    tx: Option<mpsc::Sender<Msg>>,
}

impl AuditLog {
    /// Start the writer thread over `store`.
    pub fn start(store: Arc<SqliteStore>) -> Self {
        let (tx, rx) = mpsc::channel();
        let writer = store.clone();
        let started = std::thread::Builder::new()
            .name("prism-audit".into())
            .spawn(move || write_loop(&writer, &rx));
        let tx = match started {
            Ok(_) => Some(tx),
            Err(error) => {
                tracing::warn!(message = "audit writer thread did not start; writing inline", %error);
                None
            }
        };
        AuditLog { store, tx }
    }

    /// Queue a record (never waits for the disk).
    pub fn append(&self, rec: AuditRecord) {
        let rec = match &self.tx {
            Some(tx) => match tx.send(Msg::Record(rec)) {
                Ok(()) => return,
                Err(mpsc::SendError(Msg::Record(rec))) => rec,
                Err(_) => return,
            },
            None => rec,
        };
        if let Err(error) = self.store.append_audit(&rec) {
            tracing::error!(message = "cannot append to the audit trail", %error);
        }
    }

    /// Wait until every record queued before this call is in the database (or failed to be).
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if let Some(tx) = &self.tx
            && tx.send(Msg::Flush(done)).is_ok()
        {
            let _ = wait.await;
        }
    }
}

fn write_loop(store: &SqliteStore, rx: &mpsc::Receiver<Msg>) {
    let mut batch = Vec::new();
    let mut waiters = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            if let Err(error) = store.append_audits(&batch) {
                tracing::error!(
                    message = "cannot append to the audit trail",
                    records = batch.len(),
                    %error
                );
            }
            batch.clear();
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use prism_store::auth::AuditFilter;

    use super::*;

    fn rec(i: i64) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at_ms: i,
            key_id: None,
            project: None,
            action: format!("POST /v1/x/{i}"),
            sandbox_id: None,
            status: 200,
            request_id: Some(format!("r{i}")),
        }
    }

    #[tokio::test]
    async fn a_flush_sees_every_record_queued_before_it_in_order() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let log = AuditLog::start(store.clone());
        for i in 0..1000 {
            log.append(rec(i));
        }
        log.flush().await;
        let got = store.audit(&AuditFilter::default()).unwrap();
        assert_eq!(got.len(), 1000);
        assert!(got.iter().enumerate().all(|(i, r)| r.at_ms == i as i64));
        // Nothing queued: a flush returns at once.
        log.flush().await;
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 1000);
    }
}
