//! Progress display shared by training, sampling and studies: every bar joins one
//! [`indicatif::MultiProgress`], so a study's "cells done" bar and the bars of the cells its
//! workers are running stay on screen together. Without a terminal there are no bars; the
//! callers log progress lines instead, tagged with the current cell ([`set_label`]).

use std::cell::RefCell;
use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

thread_local! {
    static LABEL: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn multi() -> &'static MultiProgress {
    static M: OnceLock<MultiProgress> = OnceLock::new();
    M.get_or_init(MultiProgress::new)
}

/// Whether bars are shown (standard error is a terminal).
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// Tags this thread's bars and log lines with `label` (a study cell's name); `None` clears it.
pub fn set_label(label: Option<String>) {
    LABEL.with(|l| *l.borrow_mut() = label);
}

/// This thread's label, if any.
pub fn label() -> Option<String> {
    LABEL.with(|l| l.borrow().clone())
}

/// A bar of `len` steps with an indicatif `template` (`{prefix}` is the thread's label), or
/// `None` when standard error is not a terminal.
pub fn bar(len: u64, template: &str) -> Option<ProgressBar> {
    if !enabled() || len == 0 {
        return None;
    }
    let b = multi().add(ProgressBar::new(len));
    b.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if let Some(l) = label() {
        b.set_prefix(format!("{l} "));
    }
    Some(b)
}

/// A spinner for work of unknown length (a download without a size), styled by an indicatif
/// `template`, or `None` when standard error is not a terminal.
pub fn spinner(template: &str) -> Option<ProgressBar> {
    if !enabled() {
        return None;
    }
    let b = multi().add(ProgressBar::new_spinner());
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    if let Some(l) = label() {
        b.set_prefix(format!("{l} "));
    }
    Some(b)
}

/// Prints a line above the bars (or to standard error when there are none).
pub fn println(line: &str) {
    if enabled() {
        let _ = multi().println(line);
    } else {
        eprintln!("{line}");
    }
}
