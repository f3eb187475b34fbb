//! The interactive client's input language: one typed line becomes one
//! [`LineCommand`]. Pure: no I/O, no client, so every form is tested here.

use chat_core::{ChatError, ClientId};

/// What `/help` prints: every form [`parse_input`] understands.
pub const HELP: &str = "\
commands:
  /msg <id> <text>   send <text> to client <id>
  <text>             send to the last recipient
  /list              list clients and whether they are online
  /history           messages you have sent
  /help              this help
  /quit              leave (Ctrl-D and Ctrl-C too)";

/// What one input line asks for, parsed before anything is done with it.
#[derive(Debug)]
pub enum LineCommand {
    /// A blank line: nothing to do.
    Nothing,
    /// `/quit` or `/exit`.
    Quit,
    /// `/help`.
    Help,
    /// `/list`.
    List,
    /// `/history`.
    History,
    /// `/msg <id> <text>` (`to` is `Some`) or plain text for the last
    /// recipient (`to` is `None`). The text is kept as typed.
    Send { to: Option<ClientId>, text: String },
    /// `/msg` whose recipient is not a valid client ID.
    BadRecipient(ChatError),
    /// Not understood; the message says what to type instead.
    Usage(String),
}

/// Parses one input line (its trailing `\r`/`\n` ignored). Never fails:
/// what it does not understand becomes [`LineCommand::Usage`].
pub fn parse_input(line: &str) -> LineCommand {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return LineCommand::Nothing;
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return LineCommand::Send {
            to: None,
            text: line.to_owned(),
        };
    };
    let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
    match name {
        "quit" | "exit" => LineCommand::Quit,
        "help" => LineCommand::Help,
        "list" => LineCommand::List,
        "history" => LineCommand::History,
        "msg" => parse_msg(rest),
        other => LineCommand::Usage(format!("unknown command /{other}; type /help")),
    }
}

/// The arguments of `/msg`: a recipient, whitespace, then the text as typed.
fn parse_msg(rest: &str) -> LineCommand {
    let rest = rest.trim_start();
    let Some((to, text)) = rest.split_once(char::is_whitespace) else {
        return LineCommand::Usage("usage: /msg <id> <text>".into());
    };
    match ClientId::parse(to) {
        Ok(to) => LineCommand::Send {
            to: Some(to),
            text: text.to_owned(),
        },
        Err(e) => LineCommand::BadRecipient(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(line: &str) -> (Option<String>, String) {
        match parse_input(line) {
            LineCommand::Send { to, text } => (to.map(|t| t.to_string()), text),
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn usage(line: &str) -> String {
        match parse_input(line) {
            LineCommand::Usage(m) => m,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    #[test]
    fn blank_lines_do_nothing() {
        for blank in ["", "\n", "\r\n", "  \t \r\n", "   "] {
            assert!(
                matches!(parse_input(blank), LineCommand::Nothing),
                "{blank:?}"
            );
        }
    }

    #[test]
    fn each_command_is_recognised_with_or_without_arguments() {
        for (line, want) in [
            ("/quit", "Quit"),
            ("/exit\n", "Quit"),
            ("/quit now", "Quit"),
            ("/help", "Help"),
            ("/help msg\r\n", "Help"),
            ("/list", "List"),
            ("/list\tall", "List"),
            ("/history", "History"),
            ("/history 10", "History"),
        ] {
            let got = format!("{:?}", parse_input(line));
            assert_eq!(got, want, "{line:?}");
        }
    }

    #[test]
    fn msg_names_the_recipient_and_keeps_the_text_as_typed() {
        assert_eq!(send("/msg bob hi"), (Some("bob".into()), "hi".into()));
        assert_eq!(
            send("/msg   bob  two  spaces \r\n"),
            (Some("bob".into()), " two  spaces ".into())
        );
        assert_eq!(
            send("/msg\tbob\t/quit"),
            (Some("bob".into()), "/quit".into())
        );
    }

    #[test]
    fn plain_text_goes_to_the_last_recipient() {
        assert_eq!(send("hello there\n"), (None, "hello there".into()));
        assert_eq!(send("  indented"), (None, "  indented".into()));
        assert_eq!(send("a/b"), (None, "a/b".into()));
    }

    #[test]
    fn msg_without_a_text_shows_its_usage() {
        for bad in ["/msg", "/msg bob", "/msg   bob", "/msg bob\n", "/msg  "] {
            assert_eq!(usage(bad), "usage: /msg <id> <text>", "{bad:?}");
        }
    }

    #[test]
    fn msg_to_an_invalid_id_is_refused() {
        for bad in [
            "/msg bo!b hi",
            "/msg é hi",
            &format!("/msg {} hi", "a".repeat(33)),
        ] {
            match parse_input(bad) {
                LineCommand::BadRecipient(e) => {
                    assert!(e.to_string().contains("invalid client ID"), "{e}");
                }
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_commands_point_to_help() {
        assert_eq!(usage("/nope"), "unknown command /nope; type /help");
        assert_eq!(usage("/QUIT"), "unknown command /QUIT; type /help");
        assert_eq!(usage("/ msg"), "unknown command /; type /help");
        assert_eq!(usage("/msgbob hi"), "unknown command /msgbob; type /help");
    }

    #[test]
    fn help_lists_every_command() {
        for command in ["/msg", "/list", "/history", "/help", "/quit"] {
            assert!(HELP.contains(command), "{command}");
        }
    }
}
