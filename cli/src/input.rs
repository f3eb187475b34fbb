//! Where typed lines come from: rustyline on a terminal, plain lines from
//! a pipe. Either way they arrive on a channel, so the REPL never blocks
//! on input.
//!
//! The line editor starts after the user's first line (Enter is enough):
//! until then output is plain lines, so a client on a TTY nobody has typed
//! into yet (a container under `docker compose up`) logs cleanly, without
//! prompt redraws. Once it runs, its external printer redraws the prompt
//! and the half-typed line after each incoming message.

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use crate::output::Output;

/// What the input side asks the main loop to do.
pub(crate) enum Input {
    Line(String),
    Eof,
}

/// Starts reading input: the line editor with the prompt `{id}> ` when
/// `tty`, plain stdin otherwise.
pub(crate) fn spawn(tty: bool, out: Output, id: String) -> mpsc::Receiver<Input> {
    let (tx, rx) = mpsc::channel(64);
    if tty {
        std::thread::spawn(move || {
            if read_first_line(&tx) {
                run_editor(&out, &tx, &format!("{id}> "));
            }
        });
    } else {
        tokio::spawn(read_stdin(tx));
    }
    rx
}

async fn read_stdin(tx: mpsc::Sender<Input>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(Input::Line(line)).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::Eof).await;
}

/// Reads the first line plainly (the terminal is still in cooked mode); an
/// empty one just brings up the prompt. Whether to go on.
fn read_first_line(tx: &mpsc::Sender<Input>) -> bool {
    let mut first = String::new();
    match std::io::stdin().read_line(&mut first) {
        Ok(0) | Err(_) => {
            let _ = tx.blocking_send(Input::Eof);
            false
        }
        Ok(_) => tx.blocking_send(Input::Line(first)).is_ok(),
    }
}

/// Runs rustyline on this thread, its external printer taking over the
/// output, until the user leaves or the REPL stops listening.
fn run_editor(out: &Output, tx: &mpsc::Sender<Input>, prompt: &str) {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            out.error_text(&format!("cannot start the line editor: {e}"));
            return;
        }
    };
    if let Ok(p) = editor.create_external_printer() {
        out.set_printer(Box::new(p));
    }
    loop {
        match editor.readline(prompt) {
            Ok(line) => {
                let _ = editor.add_history_entry(line.as_str());
                if tx.blocking_send(Input::Line(line)).is_err() {
                    return;
                }
            }
            // Ctrl-C, Ctrl-D (and a terminal that went away) leave, like /quit.
            Err(_) => {
                let _ = tx.blocking_send(Input::Line("/quit".into()));
                return;
            }
        }
    }
}
