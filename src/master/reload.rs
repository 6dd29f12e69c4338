//! `ringlb reload` through the master: the serving worker reads its config again and says
//! how it went; the master passes that on to whoever asked.

use super::handover::{answer, Conn};
use super::process::Role;
use super::supervise::Master;
use super::wire::{Answer, ToWorker};

impl Master {
    /// A client asked for a reload: the serving worker is told, the client waits for its
    /// outcome ([`Master::reloaded`]).
    pub(super) async fn reload(&mut self, conn: Conn) {
        let Some(id) = self.ids(Role::Serving).into_iter().next_back() else {
            let why = "no worker serves right now (it is starting); try again".to_owned();
            answer(&conn, Answer::Failed(why), Vec::new());
            return;
        };
        self.reloads.push((id, conn));
        if let Some(worker) = self.worker_mut(id) {
            worker.send(&ToWorker::Reload).await;
        }
    }

    /// Worker `id` reloaded (or exited): every client waiting for it gets the outcome.
    pub(super) fn reloaded(&mut self, id: u64, outcome: Result<u64, String>) {
        let (waiting, others) = std::mem::take(&mut self.reloads)
            .into_iter()
            .partition(|(worker, _)| *worker == id);
        self.reloads = others;
        for (_, conn) in waiting {
            let reply = match &outcome {
                Ok(version) => Answer::Reloaded { version: *version },
                Err(why) => Answer::Failed(why.clone()),
            };
            answer(&conn, reply, Vec::new());
        }
    }
}
