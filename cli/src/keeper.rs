//! What was shown, kept across runs: the state file's last shown seq is
//! written before the acknowledgements for it go out, so a client killed
//! in between never shows a message twice.

use chat_core::{Delivery, Incoming, IncomingEvent};

use crate::output::Output;
use crate::state_file::StateFile;

/// The state file as the CLI uses it. A file that cannot be written is
/// reported once; the client carries on (the seq is then simply not kept).
pub(crate) struct Keeper {
    file: Option<StateFile>,
    out: Output,
    failed: bool,
}

impl Keeper {
    pub(crate) fn new(file: Option<StateFile>, out: Output) -> Self {
        Self {
            file,
            out,
            failed: false,
        }
    }

    pub(crate) fn path(&self) -> Option<&std::path::Path> {
        self.file.as_ref().map(StateFile::path)
    }

    pub(crate) fn last_shown_seq(&self) -> u64 {
        self.file.as_ref().map_or(0, StateFile::last_shown_seq)
    }

    fn shown(&mut self, seq: u64) {
        if let Some(file) = &mut self.file
            && let Err(e) = file.shown(seq)
            && !std::mem::replace(&mut self.failed, true)
        {
            self.out.notice(&format!(
                "{e}; messages shown from now on may be shown again after a crash"
            ));
        }
    }
}

/// Shows `first` and whatever else is waiting already (at most `limit` in
/// all), records the last seq in the state file, and only then
/// acknowledges them: one file write per batch, and a crash between showing
/// and acknowledging never shows them again. Returns how many were shown
/// and an event that came after them, to be handled by the caller.
pub(crate) fn show_batch(
    out: &Output,
    state: &mut Keeper,
    incoming: &mut Incoming,
    first: Delivery,
    limit: usize,
) -> (usize, Option<IncomingEvent>) {
    let mut batch = vec![first];
    let mut after = None;
    while batch.len() < limit {
        match incoming.try_recv() {
            Some(IncomingEvent::Message(d)) => batch.push(d),
            Some(other) => {
                after = Some(other);
                break;
            }
            None => break,
        }
    }
    for d in &batch {
        out.message(&d.message);
    }
    if let Some(seq) = batch.iter().map(|d| d.message.seq).max() {
        state.shown(seq);
    }
    let n = batch.len();
    for d in batch {
        d.ack();
    }
    (n, after)
}
